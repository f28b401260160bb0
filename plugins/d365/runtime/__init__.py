"""The runtime layer: what the pipeline needs from Airflow, behind the small interfaces ``d365.pipeline`` declares.

Run folders on ``ObjectStoragePath`` (``runfolder``), the DAG run note (``run_note``) and the task failure alert
(``alerts``). The task layer (``d365.tasks``, the operators, the DAGs) wires these into the pipeline, which imports
nothing from Airflow.
"""
