"""Results and run files: the sealed results store (atomic writes, schema, sha256), run
directories, signatures and keys.
"""
