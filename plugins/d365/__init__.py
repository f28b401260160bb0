"""DreamApply → Dynamics 365 integration: hooks, operators and the Airflow-free pipeline steps.

Imported as ``d365`` (``plugins/`` is on Airflow's ``sys.path``; ``plugins/.airflowignore`` keeps the
plugin loader from executing these modules under their bare names).
"""
