/* The JSON codec's guard in C (tiered_cache/codecs.py, plain_json): of what orjson may read,
 * for a batch decode and a one-value decode alike.
 *
 * plain(datas) is True when no value of ``datas`` (bytes, or any other buffer) holds a "$", a
 * backslash, or a run of 20 or more bytes of "#-0123456789": exactly when orjson reads every
 * value as the codec's exact path does (codecs.py says why each byte matters). It answers as
 * plain_json, the reference in codecs.py, which joins the values with "\n" and searches the
 * join, its copy mapped with bytes.translate; the runs are counted value by value here, as
 * "\n" keeps them apart there.
 *
 * Why C: the reference's bytes.translate alone cost about 9 instructions a byte (2,300 of a
 * 253-byte tweet, an eighth of a batch read's decode of it). Here the two single bytes are
 * memchr's, and the run is looked for as a string search looks for a needle: the window's last
 * byte is read first, and a byte that is not of a run moves the next window past it (most
 * bytes of a value are read once or not at all).
 *
 * Built by tools/build_core.py beside the mypyc modules when a C compiler is present; without
 * it (or TIERED_CORE_PURE=1) the codec uses plain_json, and tests/test_codecs.py runs both on
 * the same values and demands the same answers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A run this long of NUMBER bytes may be an int orjson would read as a float. "#" is one of
 * them: the reference maps the digits and "-" to "#" and looks for 20 of those, so that a "#"
 * of the value counts too (never in a long int; plain_json is the rule, and is cautious). */
#define LONG_RUN 20

static unsigned char NUMBER[256];

/* 1 when the ``size`` bytes at ``data`` are plain, 0 when not. */
static int
plain_bytes(const unsigned char *data, Py_ssize_t size)
{
    if (memchr(data, '$', (size_t)size) != NULL || memchr(data, '\\', (size_t)size) != NULL) {
        return 0;
    }
    Py_ssize_t start = 0; /* the first byte a run of LONG_RUN may start at */
    while (start + LONG_RUN <= size) {
        Py_ssize_t at = start + LONG_RUN - 1;
        while (at >= start && NUMBER[data[at]]) {
            at--;
        }
        if (at < start) {
            return 0; /* data[start .. start + LONG_RUN - 1] is all NUMBER bytes */
        }
        start = at + 1; /* no run of LONG_RUN holds data[at] */
    }
    return 1;
}

static PyObject *
plain(PyObject *module, PyObject *datas)
{
    PyObject *items = PySequence_Fast(datas, "plain() takes a sequence of bytes");
    if (items == NULL) {
        return NULL;
    }
    int answer = 1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    PyObject **item = PySequence_Fast_ITEMS(items);
    for (Py_ssize_t index = 0; index < count && answer; index++) {
        PyObject *data = item[index];
        if (PyBytes_CheckExact(data)) {
            answer = plain_bytes((const unsigned char *)PyBytes_AS_STRING(data),
                                 PyBytes_GET_SIZE(data));
            continue;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(items);
            return NULL;
        }
        answer = plain_bytes((const unsigned char *)view.buf, view.len);
        PyBuffer_Release(&view);
    }
    Py_DECREF(items);
    return PyBool_FromLong(answer);
}

static PyMethodDef plainjson_methods[] = {
    {"plain", plain, METH_O,
     "plain(datas): True when no value holds a '$', a backslash or a run of 20 or more of "
     "'#-0123456789' (codecs.plain_json)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef plainjson_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tiered_cache._plainjson",
    .m_doc = "The JSON codec's guard in C (see tiered_cache/codecs.py, plain_json).",
    .m_size = -1,
    .m_methods = plainjson_methods,
};

PyMODINIT_FUNC
PyInit__plainjson(void)
{
    const char *number = "#-0123456789";
    for (const char *c = number; *c; c++) {
        NUMBER[(unsigned char)*c] = 1;
    }
    return PyModule_Create(&plainjson_module);
}
