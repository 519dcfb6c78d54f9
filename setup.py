"""The compiled pieces, each optional (why each exists: the file's own comment).

- streamconv/stages/_halfcast.c (writing): float32 and bfloat16 to float16, int8 quantization.
  Without it, streamconv casts with Arrow and ml_dtypes and quantizes in numpy, to the same bits.
- streamconv/format/_dequant.c (reading int8 outputs): codes times scales to float16 or float32,
  checked in the same pass. Without it, the reader does the same in numpy, to the same bits.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("streamconv.stages._halfcast", ["streamconv/stages/_halfcast.c"], optional=True),
                   Extension("streamconv.format._dequant", ["streamconv/format/_dequant.c"], optional=True)])
