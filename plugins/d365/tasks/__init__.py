"""The task layer of the ``dreamapply_to_dynamics365`` DAG: one module per task, each a thin function over the
pipeline (``d365.pipeline``) and the hooks, wired to Airflow by the DAG file.

preflight → lock → extract → transform → plan → load (``LoadLeadsOperator``) → commit → report

Tasks exchange data through the run folder (``RunFolder``; file names in ``d365.pipeline.runfiles``) and return
only small dicts for XCom. Hooks are built inside the tasks, at task run time, never at DAG parse time.
"""
