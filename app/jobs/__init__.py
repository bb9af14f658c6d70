"""A job's whole life: its statuses, the decision table, the statements that write it, the run.

status.py   the statuses and their sets; every SQL list and schema literal derives from them
records.py  the typed values a job keeps: cancellation, refund, upstream error
decide.py   the pure decision table: what an iamport answer means, which step or status next
store.py    every statement that writes a job row or an attempt row
run.py      one run of one job: claim, call, decide, record (used by the Celery task)
"""
