/* int8 codes times their float16 block scales, to float16 or float32, checked in the same pass
 * (the reading side of format version 4 on: streamconv/format/quantized.py documents the rule).
 *
 * Why by hand: numpy needs a pass for each check and about nine for the rounding to float16 (its
 * float32 -> float16 cast is done in software, one element at a time): reading BERT-large's int8
 * output to float16 cost twice as much per element as reading its float16 output. Here each code
 * is read once: widened to float32, multiplied by its block's scale (exact: 8 bits times 11) and,
 * for float16, rounded once to nearest even by the CPU's conversion instruction (x86 F16C).
 *
 * The same pass checks what quantized.check_scales checks and returns a bit per problem found
 * (quantized.py turns them into its messages): a scale negative or not finite (1), a code of -128
 * (2), a zero scale for a block whose codes are not all zero, or the reverse (4). The output is
 * unspecified when the result is not 0. Raw codes (dequantize=None) are checked without an output.
 *
 * It also splits and joins the nibbles of a nibble-split plane (format version 5, coder 3: layout in
 * streamconv/format/nibbles.py), in plain loops the compiler vectorizes for any CPU: numpy's byte
 * shifts are not vectorized, and the join sits on the read path of every int8 chunk.
 *
 * Built as an optional extension: where it is missing, or the CPU has no AVX2 and F16C, the reader
 * does the same in numpy, to the same bits (tests/test_dequant.py and tests/test_nibbles.py compare them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BAD_SCALE 1
#define BAD_CODE 2
#define BAD_ZERO 4

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DEQUANT_X86 1
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,f16c")))

/* 32 codes (at least 32 bytes readable at codes) times the scale, written at out[i...] as float16
 * (size 2), float32 (4) or not at all (0: checked only), with streaming stores (stream: out + i
 * 16-byte aligned); their OR and minimum gathered for the checks. */
TARGET static inline void group32(const int8_t *codes, __m256 scale, void *out, Py_ssize_t i, int size, int stream,
                                  __m256i *any, __m256i *low) {
    __m256i bytes = _mm256_loadu_si256((const __m256i *)codes);
    *any = _mm256_or_si256(*any, bytes);
    *low = _mm256_min_epi8(*low, bytes);
    if (!size) return;
    for (int k = 0; k < 4; k++) {
        __m256i wide = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(codes + 8 * k)));
        __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(wide), scale);
        if (size == 2) {
            __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m128i *at = (__m128i *)((uint16_t *)out + i + 8 * k);
            if (stream) _mm_stream_si128(at, h);
            else _mm_storeu_si128(at, h);
        } else {
            float *at = (float *)out + i + 8 * k;
            if (stream) {
                _mm_stream_ps(at, _mm256_castps256_ps128(x));
                _mm_stream_ps(at + 4, _mm256_extractf128_ps(x, 1));
            } else {
                _mm256_storeu_ps(at, x);
            }
        }
    }
}

/* One block of n codes (any n >= 1) with scale bits h, written at out[i...] (size, stream: as
 * group32, stream for the block's whole groups of 32); its problem bits but the code -128's, which
 * the caller finds in low. */
TARGET static inline int block_into(const int8_t *codes, uint16_t h, Py_ssize_t n, void *out, Py_ssize_t i,
                                    int size, int stream, __m256i *low) {
    __m256 scale = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))));
    __m256i any = _mm256_setzero_si256();
    Py_ssize_t j = 0;
    for (; j + 32 <= n; j += 32) group32(codes + j, scale, out, i + j, size, stream, &any, low);
    if (j < n) {  /* the tail, through zero-padded copies */
        int8_t in[32] = {0};
        float result[32];
        memcpy(in, codes + j, (size_t)(n - j));
        group32(in, scale, result, 0, size, 0, &any, low);
        if (size) memcpy((char *)out + (i + j) * size, result, (size_t)(n - j) * size);
    }
    int nonzero = !_mm256_testz_si256(any, any);
    return nonzero != (h != 0) ? BAD_ZERO : 0;
}

/* Problem bit 1 for a scale that is negative or not finite, 16 scales at a time. */
TARGET static int scales_problem(const uint16_t *scales, Py_ssize_t count) {
    const __m256i sign = _mm256_set1_epi16((short)0x8000), exponent = _mm256_set1_epi16(0x7c00);
    __m256i bad = _mm256_setzero_si256();
    Py_ssize_t k = 0;
    for (; k + 16 <= count; k += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(scales + k));
        bad = _mm256_or_si256(bad, _mm256_and_si256(v, sign));
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(_mm256_and_si256(v, exponent), exponent));
    }
    int problems = _mm256_testz_si256(bad, bad) ? 0 : BAD_SCALE;
    for (; k < count; k++)
        if ((scales[k] & 0x8000) || (scales[k] & 0x7c00) == 0x7c00) problems = BAD_SCALE;
    return problems;
}

/* Rows whose blocks are all whole (cols a multiple of block): one run of blocks, their scales in
 * order. Inlined with constant block, size and stream, so each case gets its own unrolled loop. */
TARGET static inline __attribute__((always_inline)) int whole_blocks(
        const int8_t *codes, const uint16_t *scales, Py_ssize_t blocks, Py_ssize_t block, void *out, int size,
        int stream, __m256i *low) {
    int problems = 0;
    for (Py_ssize_t b = 0; b < blocks; b++)
        problems |= block_into(codes + b * block, scales[b], block, out, b * block, size, stream, low);
    return problems;
}

TARGET static int dequantize_rows(const int8_t *codes, const uint16_t *scales, Py_ssize_t rows, Py_ssize_t cols,
                                  Py_ssize_t block, void *out, int size) {
    /* Streaming stores skip reading out's lines into the cache first (a tenth of the time here): out
     * is a tensor larger than the caches, read after the whole tensor is decoded. */
    int stream = (uintptr_t)out % 16 == 0 && cols % 8 == 0 && block % 8 == 0;
    Py_ssize_t per_row = (cols + block - 1) / block;
    int problems = scales_problem(scales, rows * per_row);
    __m256i low = _mm256_setzero_si256();
    if (block == 64 && cols % 64 == 0) {  /* what the writer writes */
        Py_ssize_t blocks = rows * per_row;
        if (size == 2 && stream) problems |= whole_blocks(codes, scales, blocks, 64, out, 2, 1, &low);
        else if (size == 2) problems |= whole_blocks(codes, scales, blocks, 64, out, 2, 0, &low);
        else if (size == 4 && stream) problems |= whole_blocks(codes, scales, blocks, 64, out, 4, 1, &low);
        else if (size == 4) problems |= whole_blocks(codes, scales, blocks, 64, out, 4, 0, &low);
        else problems |= whole_blocks(codes, scales, blocks, 64, out, 0, 0, &low);
    } else {
        for (Py_ssize_t r = 0; r < rows; r++) {
            const uint16_t *row_scales = scales + r * per_row;
            for (Py_ssize_t b = 0; b < per_row; b++) {
                Py_ssize_t start = r * cols + b * block, n = cols - b * block < block ? cols - b * block : block;
                problems |= block_into(codes + start, row_scales[b], n, out, start, size, stream, &low);
            }
        }
    }
    _mm_sfence();
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(low, _mm256_set1_epi8(-128)))) problems |= BAD_CODE;
    return problems;
}
#endif

static int supported_cpu(void) {
#ifdef DEQUANT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static PyObject *supported(PyObject *self, PyObject *args) {
    return PyBool_FromLong(supported_cpu());
}

/* dequantize(codes, scales, cols, block, out, out_itemsize) -> problem bits (0: none).
 * codes: C-contiguous int8, whole rows of cols; scales: their float16 bits, ceil(cols / block) per
 * row; out: writable, out_itemsize (2: float16, 4: float32) bytes per code, or out_itemsize 0 and
 * out of any size: the codes and scales are checked only. */
static PyObject *dequantize(PyObject *self, PyObject *args) {
    Py_buffer codes, scales, out;
    Py_ssize_t cols, block;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*y*nnw*i", &codes, &scales, &cols, &block, &out, &itemsize)) return NULL;
    PyObject *result = NULL;
    if (!supported_cpu()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AVX2 and F16C instructions");
    } else if ((itemsize != 0 && itemsize != 2 && itemsize != 4) || cols < 1 || block < 1 || codes.len % cols != 0
               || (itemsize && out.len != codes.len * itemsize)
               || scales.len != codes.len / cols * ((cols + block - 1) / block) * 2) {
        PyErr_SetString(PyExc_ValueError, "codes must be whole rows of cols, scales 2 bytes per block of a row, "
                                          "out 2 or 4 bytes (out_itemsize) per code, or out_itemsize 0");
    } else {
#ifdef DEQUANT_X86
        int problems;
        Py_BEGIN_ALLOW_THREADS
        problems = dequantize_rows((const int8_t *)codes.buf, (const uint16_t *)scales.buf, codes.len / cols, cols,
                                   block, out.buf, itemsize);
        Py_END_ALLOW_THREADS
        result = PyLong_FromLong(problems);
#endif
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&scales);
    PyBuffer_Release(&out);
    return result;
}

/* high[i], low[i] from plane bytes b[2i], b[2i+1] (b[n] = 0 when n is odd). */
static void split_pairs(const uint8_t *b, Py_ssize_t n, uint8_t *high, uint8_t *low) {
    Py_ssize_t pairs = n / 2;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        uint8_t even = b[2 * i], odd = b[2 * i + 1];
        high[i] = (uint8_t)((even & 0xF0) | (odd >> 4));
        low[i] = (uint8_t)((even << 4) | (odd & 0x0F));
    }
    if (n % 2) {
        high[pairs] = (uint8_t)(b[n - 1] & 0xF0);
        low[pairs] = (uint8_t)(b[n - 1] << 4);
    }
}

/* The plane's n bytes back from high and low (ceil(n / 2) bytes each). */
static void join_pairs(const uint8_t *high, const uint8_t *low, Py_ssize_t n, uint8_t *b) {
    Py_ssize_t pairs = n / 2;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        uint8_t h = high[i], l = low[i];
        b[2 * i] = (uint8_t)((h & 0xF0) | (l >> 4));
        b[2 * i + 1] = (uint8_t)((h << 4) | (l & 0x0F));
    }
    if (n % 2) b[n - 1] = (uint8_t)((high[pairs] & 0xF0) | (low[pairs] >> 4));
}

/* split_nibbles(plane, high, low) / join_nibbles(high, low, plane): high and low hold exactly
 * ceil(len(plane) / 2) bytes; the one written is writable. */
static PyObject *nibbles(PyObject *args, int join) {
    Py_buffer plane, high, low;
    int parsed = join ? PyArg_ParseTuple(args, "y*y*w*", &high, &low, &plane)
                      : PyArg_ParseTuple(args, "y*w*w*", &plane, &high, &low);
    if (!parsed) return NULL;
    PyObject *result = NULL;
    Py_ssize_t half = plane.len / 2 + plane.len % 2;
    if (high.len != half || low.len != half) {
        PyErr_SetString(PyExc_ValueError, "high and low must hold ceil(len(plane) / 2) bytes each");
    } else {
        Py_BEGIN_ALLOW_THREADS
        if (join) join_pairs((const uint8_t *)high.buf, (const uint8_t *)low.buf, plane.len, (uint8_t *)plane.buf);
        else split_pairs((const uint8_t *)plane.buf, plane.len, (uint8_t *)high.buf, (uint8_t *)low.buf);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&plane);
    PyBuffer_Release(&high);
    PyBuffer_Release(&low);
    return result;
}

static PyObject *split_nibbles(PyObject *self, PyObject *args) { return nibbles(args, 0); }

static PyObject *join_nibbles(PyObject *self, PyObject *args) { return nibbles(args, 1); }

static PyMethodDef methods[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU has the instructions."},
    {"dequantize", dequantize, METH_VARARGS,
     "dequantize(codes, scales, cols, block, out, out_itemsize) -> problem bits (0: none)."},
    {"split_nibbles", split_nibbles, METH_VARARGS, "split_nibbles(plane, high, low): a plane's nibbles, paired."},
    {"join_nibbles", join_nibbles, METH_VARARGS, "join_nibbles(high, low, plane): the plane back."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dequant", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dequant(void) { return PyModule_Create(&module); }
