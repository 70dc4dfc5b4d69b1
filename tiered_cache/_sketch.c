/* The frequency sketch's counter table in C (tiered_cache/sketch.py).
 *
 * Counters(table, width, bits, ceiling) works on ``table``, the sketch's bytearray of
 * 4 x width counters of ``bits`` bits each, packed end to end (counter i is bits i * bits to
 * i * bits + bits - 1 of the table read as one little-endian number, so it lies within two
 * adjacent bytes). It answers the two calls every read and every admission contest makes:
 *
 *   add(key, count)  the conservative update of the key's four counters; the new estimate,
 *                    or -1 when they were all at ``ceiling`` already (nothing added)
 *   frequency(key)   the estimate: the least of the key's four counters
 *
 * exactly as the class ``Counters`` of sketch.py, which stays the reference: the row
 * indexes are the same slices of the same hash() (PyObject_Hash is what hash() returns), the
 * same counters are raised to the same values. Aging (halving) stays in sketch.py: it runs
 * once per sample, as a few big-integer operations over the whole table.
 *
 * Why C: the compiled core (mypyc) has no fast path for bytearray items; each read or write
 * of a counter byte was a generic call and an int object, about 9,000 instructions an update
 * and 2,000 an estimate, a quarter of a miss.
 *
 * Built by tools/build_core.py beside the mypyc modules when a C compiler is present; without
 * it (or TIERED_CORE_PURE=1) the sketch uses sketch.Counters, and tests/test_sketch.py runs
 * the same operations on both and demands identical answers and tables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    PyObject *table;    /* the sketch's bytearray (shared: aging halves it in place) */
    uint64_t width;     /* counters per row, a power of two */
    uint64_t mask;      /* width - 1 */
    unsigned int bits;  /* bits per counter, 1 to 8 */
    unsigned int field; /* (1 << bits) - 1 */
    long ceiling;       /* where a counter saturates, 1 to field */
    Py_ssize_t needed;  /* bytes the counters span, with the spare byte the last one reads */
} Counters;

/* The bit offset of each of the key's four counters: bits 0, 16, 32 and 48 of the unsigned
 * hash (wrapping around), one per row, as sketch.Counters computes them. */
static void
offsets(const Counters *self, Py_hash_t hash, uint64_t at[4])
{
    uint64_t h = (uint64_t)hash;
    uint64_t low32 = h & 0xFFFFFFFFu;
    uint64_t high32 = h >> 32;
    uint64_t mask = self->mask, width = self->width, bits = self->bits;
    at[0] = (low32 & mask) * bits;
    at[1] = (width + (((low32 >> 16) | (high32 << 16)) & mask)) * bits;
    at[2] = (2 * width + (high32 & mask)) * bits;
    at[3] = (3 * width + (((high32 >> 16) | (low32 << 16)) & mask)) * bits;
}

/* The table's bytes, or NULL (an exception set) if it no longer spans the counters. */
static unsigned char *
table_bytes(const Counters *self)
{
    if (PyByteArray_GET_SIZE(self->table) < self->needed) {
        PyErr_SetString(PyExc_ValueError, "the counter table was resized");
        return NULL;
    }
    return (unsigned char *)PyByteArray_AS_STRING(self->table);
}

static inline unsigned int
read_counter(const Counters *self, const unsigned char *table, uint64_t at)
{
    uint64_t index = at >> 3;
    unsigned int pair = (unsigned int)table[index] | (unsigned int)table[index + 1] << 8;
    return (pair >> (at & 7)) & self->field;
}

static PyObject *
Counters_frequency(Counters *self, PyObject *key)
{
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *table = table_bytes(self);
    if (table == NULL) {
        return NULL;
    }
    uint64_t at[4];
    offsets(self, hash, at);
    unsigned int low = read_counter(self, table, at[0]);
    for (int row = 1; row < 4; row++) {
        unsigned int value = read_counter(self, table, at[row]);
        if (value < low) {
            low = value;
        }
    }
    return PyLong_FromLong((long)low);
}

static PyObject *
Counters_add(Counters *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "add() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_hash_t hash = PyObject_Hash(args[0]);
    if (hash == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int overflow;
    long count = PyLong_AsLongAndOverflow(args[1], &overflow);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow != 0) {
        count = overflow > 0 ? LONG_MAX : -1; /* saturates all the same; refused */
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return NULL;
    }
    unsigned char *table = table_bytes(self);
    if (table == NULL) {
        return NULL;
    }
    uint64_t at[4];
    unsigned int value[4];
    offsets(self, hash, at);
    unsigned int low = (unsigned int)self->field;
    for (int row = 0; row < 4; row++) {
        value[row] = read_counter(self, table, at[row]);
        if (value[row] < low) {
            low = value[row];
        }
    }
    long ceiling = self->ceiling;
    if ((long)low >= ceiling) {
        return PyLong_FromLong(-1);
    }
    /* low < ceiling <= 255: no overflow while count is below ceiling. */
    long high = count >= ceiling ? ceiling : (long)low + count;
    if (high > ceiling) {
        high = ceiling;
    }
    /* Conservative update: each counter below the new estimate is raised to it; adding the
     * difference at its shift changes that counter alone (it stays within its bits). */
    for (int row = 0; row < 4; row++) {
        if ((long)value[row] < high) {
            uint64_t index = at[row] >> 3;
            unsigned int pair = (unsigned int)table[index] | (unsigned int)table[index + 1] << 8;
            pair += ((unsigned int)high - value[row]) << (at[row] & 7);
            table[index] = (unsigned char)(pair & 0xFF);
            table[index + 1] = (unsigned char)(pair >> 8);
        }
    }
    return PyLong_FromLong(high);
}

static int
Counters_init(Counters *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"table", "width", "bits", "ceiling", NULL};
    PyObject *table;
    unsigned long long width;
    int bits;
    long ceiling;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O!Kil:Counters", names, &PyByteArray_Type, &table, &width, &bits,
            &ceiling)) {
        return -1;
    }
    if (width < 1 || width > (1ULL << 32) || (width & (width - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "width must be a power of two, at most 2**32");
        return -1;
    }
    if (bits < 1 || bits > 8) {
        PyErr_SetString(PyExc_ValueError, "bits must be between 1 and 8");
        return -1;
    }
    if (ceiling < 1 || ceiling > (1L << bits) - 1) {
        PyErr_SetString(PyExc_ValueError, "ceiling must be between 1 and the largest counter");
        return -1;
    }
    uint64_t needed = (4 * (uint64_t)width * (uint64_t)bits + 7) / 8 + 1;
    if (needed > (uint64_t)PY_SSIZE_T_MAX || PyByteArray_GET_SIZE(table) < (Py_ssize_t)needed) {
        PyErr_SetString(PyExc_ValueError, "the table is too small for 4 rows of width counters");
        return -1;
    }
    Py_INCREF(table);
    Py_XSETREF(self->table, table);
    self->width = (uint64_t)width;
    self->mask = (uint64_t)width - 1;
    self->bits = (unsigned int)bits;
    self->field = (1u << bits) - 1;
    self->ceiling = ceiling;
    self->needed = (Py_ssize_t)needed;
    return 0;
}

static int
Counters_traverse(Counters *self, visitproc visit, void *arg)
{
    Py_VISIT(self->table);
    return 0;
}

static int
Counters_clear(Counters *self)
{
    Py_CLEAR(self->table);
    return 0;
}

static void
Counters_dealloc(Counters *self)
{
    PyObject_GC_UnTrack(self);
    Counters_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Counters_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Counters_add, METH_FASTCALL,
     "add(key, count): raise the key's counters (conservative update); the new estimate, "
     "or -1 if they were all saturated already."},
    {"frequency", (PyCFunction)Counters_frequency, METH_O,
     "frequency(key): the least of the key's four counters."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tiered_cache._sketch.Counters",
    .tp_doc = "The frequency sketch's counter table: updates and estimates in C.",
    .tp_basicsize = sizeof(Counters),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Counters_init,
    .tp_dealloc = (destructor)Counters_dealloc,
    .tp_traverse = (traverseproc)Counters_traverse,
    .tp_clear = (inquiry)Counters_clear,
    .tp_methods = Counters_methods,
};

static struct PyModuleDef sketch_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tiered_cache._sketch",
    .m_doc = "The frequency sketch's counter table in C (see tiered_cache/sketch.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__sketch(void)
{
    if (PyType_Ready(&CountersType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&sketch_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&CountersType);
    if (PyModule_AddObject(module, "Counters", (PyObject *)&CountersType) < 0) {
        Py_DECREF(&CountersType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
