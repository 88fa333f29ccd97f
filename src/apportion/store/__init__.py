"""The database: tables (``schema.py``), migrations, the SQL each service
runs, blobs. Imports only ``core`` (and ``exceptions``): no service logic here.
"""
