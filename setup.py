"""The one compiled piece: streamconv/stages/_halfcast.c (why it exists: the file's own comment).

Optional: where it cannot be built, streamconv casts with Arrow and ml_dtypes to the same bits.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("streamconv.stages._halfcast", ["streamconv/stages/_halfcast.c"], optional=True)])
