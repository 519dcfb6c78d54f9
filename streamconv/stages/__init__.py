"""The pipeline's pure generator stages: select, rename, chunk and cast lazy tensor handles.

Nothing here writes; the float16 cast kernel (``_halfcast.c``) is the only compiled piece."""
