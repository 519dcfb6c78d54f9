/* float32 and bfloat16 to float16 with the CPU's conversion instruction (x86 F16C).
 *
 * Why by hand: numpy (numpy/numpy#28753), Arrow (arrow::util::Float16::FromFloat) and ml_dtypes
 * all convert to float16 in software on x86, one element at a time, at 0.4 G elements/s here:
 * the cast was half the CPU of a float32 -> float16 conversion. VCVTPS2PH does 8 per instruction
 * (measured 5-10x faster per chunk). torch has such a kernel, but is no dependency of conversion.
 *
 * The result is numpy's cast (IEEE round to nearest even, subnormals and infinities included) for
 * every float32 that is not a NaN; a NaN stays a NaN of the same sign with the top bits of its
 * payload, made quiet (numpy keeps a signalling NaN signalling). bfloat16 widens to float32
 * exactly first, so it is rounded once, as a direct cast rounds it.
 *
 * Each function also returns the largest magnitude (bits & 0x7fff) among the results, so the
 * caller learns whether anything reached float16's largest finite value, inf or NaN without a
 * second pass over the data.
 *
 * Built as an optional extension: where it is missing, or the CPU has no F16C, streamconv casts
 * with Arrow and ml_dtypes (streamconv/stages.py), to the same bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HALFCAST_X86 1
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,f16c")))

TARGET static inline __m128i convert8(__m256 x, __m128i *peak) {
    __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *peak = _mm_max_epu16(*peak, _mm_and_si128(h, _mm_set1_epi16(0x7fff)));
    return h;
}

TARGET static inline __m256 widen_bf16(__m128i b) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

TARGET static uint16_t horizontal_max(__m128i peak) {
    uint16_t lanes[8];
    uint16_t best = 0;
    _mm_storeu_si128((__m128i *)lanes, peak);
    for (int i = 0; i < 8; i++) best = lanes[i] > best ? lanes[i] : best;
    return best;
}

TARGET static uint16_t f32_to_f16(const float *src, uint16_t *dst, Py_ssize_t n) {
    __m128i peak = _mm_setzero_si128();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), convert8(_mm256_loadu_ps(src + i), &peak));
    if (i < n) {  /* the tail, through zero-padded copies */
        float in[8] = {0};
        uint16_t out[8];
        memcpy(in, src + i, (size_t)(n - i) * sizeof(float));
        _mm_storeu_si128((__m128i *)out, convert8(_mm256_loadu_ps(in), &peak));
        memcpy(dst + i, out, (size_t)(n - i) * sizeof(uint16_t));
    }
    return horizontal_max(peak);
}

TARGET static uint16_t bf16_to_f16(const uint16_t *src, uint16_t *dst, Py_ssize_t n) {
    __m128i peak = _mm_setzero_si128();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), convert8(widen_bf16(_mm_loadu_si128((const __m128i *)(src + i))), &peak));
    if (i < n) {
        uint16_t in[8] = {0};
        uint16_t out[8];
        memcpy(in, src + i, (size_t)(n - i) * sizeof(uint16_t));
        _mm_storeu_si128((__m128i *)out, convert8(widen_bf16(_mm_loadu_si128((const __m128i *)in)), &peak));
        memcpy(dst + i, out, (size_t)(n - i) * sizeof(uint16_t));
    }
    return horizontal_max(peak);
}
#endif

static int supported_cpu(void) {
#ifdef HALFCAST_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static PyObject *supported(PyObject *self, PyObject *args) {
    return PyBool_FromLong(supported_cpu());
}

/* to_float16(source, destination, source_itemsize) -> largest result magnitude (bits & 0x7fff).
 * source: C-contiguous float32 (itemsize 4) or bfloat16 (itemsize 2) elements; destination: a
 * writable C-contiguous buffer of exactly 2 bytes per source element. */
static PyObject *to_float16(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*w*i", &src, &dst, &itemsize)) return NULL;
    PyObject *result = NULL;
    if (!supported_cpu()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no F16C conversion instructions");
    } else if (itemsize != 4 && itemsize != 2) {
        PyErr_SetString(PyExc_ValueError, "source itemsize must be 4 (float32) or 2 (bfloat16)");
    } else if (src.len % itemsize != 0 || dst.len != src.len / itemsize * 2) {
        PyErr_SetString(PyExc_ValueError, "destination must hold 2 bytes per source element");
    } else {
#ifdef HALFCAST_X86
        uint16_t peak;
        Py_ssize_t n = src.len / itemsize;
        Py_BEGIN_ALLOW_THREADS
        peak = itemsize == 4 ? f32_to_f16((const float *)src.buf, (uint16_t *)dst.buf, n)
                             : bf16_to_f16((const uint16_t *)src.buf, (uint16_t *)dst.buf, n);
        Py_END_ALLOW_THREADS
        result = PyLong_FromLong(peak);
#endif
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU has the conversion instructions."},
    {"to_float16", to_float16, METH_VARARGS,
     "to_float16(source, destination, source_itemsize) -> largest result magnitude bits."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_halfcast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__halfcast(void) { return PyModule_Create(&module); }
