/* The hit of a @cache.cached function without a Python frame (tiered_cache/decorator.py).
 *
 * HitCall(fallback, rest, not_fresh, escape, literals, indexes, enders, min_args, max_args)
 * is called as the decorated function. For the commonest call -- positional arguments only, between
 * min_args and max_args of them, every value the template names an exact str or int -- it
 * builds the key the generated wrapper's f-string would build, calls reader(key) and returns
 * the value; on NOT_FRESH it returns rest(key, *args), the rest of the generated wrapper.
 * ``reader`` is the chain's l1_hit, set by the chain whenever that changes
 * (L1Reader.follow_l1_hit: reading it from the chain on every call cost a third of the hit);
 * until it is set, every call goes to the fallback. Any other call -- keywords, another
 * type, a value that would need escaping, a failure while building the key -- goes to
 * fallback(*args, **kwargs), the generated wrapper itself, which stays the reference: this
 * file only answers calls it can answer exactly as the wrapper would.
 *
 * Built by tools/build_core.py beside the mypyc modules when a C compiler is present; without
 * it (or TIERED_CORE_PURE=1) the decorator returns the generated wrapper, and
 * tests/test_hitcall.py runs the same calls on both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* Fields of a template and positional arguments handled here; more go to the fallback. */
#define MAX_FIELDS 8
#define MAX_ARGS 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;  /* the generated wrapper: every call not of the fast shape */
    PyObject *rest;      /* rest(key, *args): the wrapper after l1_hit said NOT_FRESH */
    PyObject *reader;    /* the chain's l1_hit (NULL: not set yet) */
    PyObject *not_fresh;
    PyObject *literals;  /* tuple of nfields + 1 str: the text before each field, then after */
    PyObject *enders;    /* tuple of nfields: the str ending each value, None for the last */
    PyObject *dict;      /* __dict__: what functools.update_wrapper and the decorator set */
    PyObject *weakreflist;
    Py_ssize_t nfields;
    Py_ssize_t indexes[MAX_FIELDS]; /* the positional index of each field's parameter */
    Py_UCS4 ender_chars[MAX_FIELDS]; /* 0: the last field, never escaped */
    Py_UCS4 escape;     /* the escape character of keys (tiered_cache.keys.ESCAPE) */
    Py_ssize_t min_args;
    Py_ssize_t max_args;
} HitCall;

/* The value of one field as the f-string would format it, as a new reference; NULL (no
 * exception set) when this call is not one to answer here. */
static PyObject *
field_text(HitCall *self, Py_ssize_t field, PyObject *value)
{
    PyObject *text;
    if (PyUnicode_CheckExact(value)) {
        Py_INCREF(value);
        text = value;
    }
    else if (PyLong_CheckExact(value)) {
        /* format(n, '') of an exact int is str(n); a failure (the digit limit) is the
         * fallback's to raise. */
        text = PyObject_Str(value);
        if (text == NULL) {
            PyErr_Clear();
            return NULL;
        }
    }
    else {
        return NULL;
    }
    if (self->ender_chars[field] != 0) {
        /* A value that is not the last one would be escaped: left to the wrapper (rare). */
        Py_ssize_t length = PyUnicode_GET_LENGTH(text);
        if (PyUnicode_FindChar(text, self->escape, 0, length, 1) != -1
            || PyUnicode_FindChar(text, self->ender_chars[field], 0, length, 1) != -1) {
            Py_DECREF(text);
            return NULL;
        }
    }
    return text;
}

/* The key for these positional arguments, or NULL (no exception set) to fall back. */
static PyObject *
build_key(HitCall *self, PyObject *const *args)
{
    /* literal 0, field 0, literal 1, ..., field n-1, literal n: fields at the odd places */
    PyObject *parts[2 * MAX_FIELDS + 1];
    Py_ssize_t n = self->nfields, count = 2 * n + 1;
    Py_ssize_t length = 0, owned = 0, i;
    Py_UCS4 maxchar = 0;
    PyObject *key = NULL;
    for (i = 0; i < n; i++) {
        parts[2 * i] = PyTuple_GET_ITEM(self->literals, i);
        parts[2 * i + 1] = field_text(self, i, args[self->indexes[i]]);
        if (parts[2 * i + 1] == NULL) {
            goto done;
        }
        owned++;
    }
    parts[count - 1] = PyTuple_GET_ITEM(self->literals, n);
    for (i = 0; i < count; i++) {
        length += PyUnicode_GET_LENGTH(parts[i]);
        if (PyUnicode_MAX_CHAR_VALUE(parts[i]) > maxchar) {
            maxchar = PyUnicode_MAX_CHAR_VALUE(parts[i]);
        }
    }
    key = PyUnicode_New(length, maxchar);
    if (key == NULL) {
        PyErr_Clear(); /* out of memory: the fallback meets it again */
        goto done;
    }
    if (maxchar < 256) {
        /* Every part is one byte a character (the usual key): plain copies. */
        Py_UCS1 *at = PyUnicode_1BYTE_DATA(key);
        for (i = 0; i < count; i++) {
            memcpy(at, PyUnicode_1BYTE_DATA(parts[i]), PyUnicode_GET_LENGTH(parts[i]));
            at += PyUnicode_GET_LENGTH(parts[i]);
        }
    }
    else {
        Py_ssize_t at = 0;
        for (i = 0; i < count; i++) {
            Py_ssize_t size = PyUnicode_GET_LENGTH(parts[i]);
            if (PyUnicode_CopyCharacters(key, at, parts[i], 0, size) < 0) {
                PyErr_Clear(); /* not expected (the key is new and wide enough): fall back */
                Py_CLEAR(key);
                break;
            }
            at += size;
        }
    }
done:
    for (i = 0; i < owned; i++) {
        Py_DECREF(parts[2 * i + 1]);
    }
    return key;
}

/* A call while the garbage collector clears this object (from a finalizer it set off). */
static PyObject *
being_collected(void)
{
    PyErr_SetString(PyExc_RuntimeError, "a cached function called while being collected");
    return NULL;
}

static PyObject *
HitCall_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HitCall *self = (HitCall *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs >= self->min_args && nargs <= self->max_args
        && self->reader != NULL) {
        /* Held for the call: the chain may set another reader meanwhile (another thread). */
        PyObject *reader = self->reader;
        Py_INCREF(reader);
        PyObject *key = build_key(self, args);
        if (key != NULL) {
            PyObject *call[MAX_ARGS + 2];
            call[1] = key;
            PyObject *value = PyObject_Vectorcall(
                reader, call + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(reader);
            if (value != self->not_fresh) {
                Py_DECREF(key);
                return value; /* the hit, or NULL with the reader's exception */
            }
            Py_DECREF(value);
            if (self->rest == NULL) {
                Py_DECREF(key);
                return being_collected();
            }
            for (Py_ssize_t i = 0; i < nargs; i++) {
                call[i + 2] = args[i];
            }
            value = PyObject_Vectorcall(
                self->rest, call + 1, (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(key);
            return value;
        }
        Py_DECREF(reader);
    }
    if (self->fallback == NULL) {
        return being_collected();
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
HitCall_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fallback, *rest, *not_fresh, *escape, *literals, *indexes, *enders;
    Py_ssize_t min_args, max_args;
    static char *names[] = {"fallback", "rest",     "not_fresh", "escape",   "literals",
                            "indexes",  "enders",   "min_args",  "max_args", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOUO!O!O!nn:HitCall", names, &fallback,
                                     &rest, &not_fresh, &escape, &PyTuple_Type, &literals,
                                     &PyTuple_Type, &indexes, &PyTuple_Type, &enders, &min_args,
                                     &max_args)) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(indexes);
    if (n < 1 || n > MAX_FIELDS || PyTuple_GET_SIZE(enders) != n
        || PyTuple_GET_SIZE(literals) != n + 1) {
        PyErr_SetString(PyExc_ValueError, "HitCall: 1 to 8 fields, one ender each, n+1 literals");
        return NULL;
    }
    if (min_args < 1 || max_args < min_args || max_args > MAX_ARGS) {
        PyErr_SetString(PyExc_ValueError, "HitCall: 1 <= min_args <= max_args <= 8");
        return NULL;
    }
    if (PyUnicode_GET_LENGTH(escape) != 1) {
        PyErr_SetString(PyExc_ValueError, "HitCall: the escape is one character");
        return NULL;
    }
    HitCall *self = (HitCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->nfields = n;
    self->escape = PyUnicode_READ_CHAR(escape, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *literal = PyTuple_GET_ITEM(literals, i);
        PyObject *ender = PyTuple_GET_ITEM(enders, i);
        Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(indexes, i));
        if (index == -1 && PyErr_Occurred()) {
            Py_DECREF(self);
            return NULL;
        }
        if (!PyUnicode_CheckExact(literal) || index < 0 || index >= min_args
            || (ender != Py_None
                && !(PyUnicode_CheckExact(ender) && PyUnicode_GET_LENGTH(ender) == 1))) {
            PyErr_SetString(PyExc_ValueError,
                            "HitCall: literals are str, indexes below min_args, enders one "
                            "character or None");
            Py_DECREF(self);
            return NULL;
        }
        self->indexes[i] = index;
        self->ender_chars[i] = ender == Py_None ? 0 : PyUnicode_READ_CHAR(ender, 0);
    }
    if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(literals, n))) {
        PyErr_SetString(PyExc_ValueError, "HitCall: literals are str");
        Py_DECREF(self);
        return NULL;
    }
    self->min_args = min_args;
    self->max_args = max_args;
    Py_INCREF(fallback);
    self->fallback = fallback;
    Py_INCREF(rest);
    self->rest = rest;
    Py_INCREF(not_fresh);
    self->not_fresh = not_fresh;
    Py_INCREF(literals);
    self->literals = literals;
    Py_INCREF(enders);
    self->enders = enders;
    self->vectorcall = HitCall_vectorcall;
    return (PyObject *)self;
}

static int
HitCall_traverse(HitCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->rest);
    Py_VISIT(self->reader);
    Py_VISIT(self->not_fresh);
    Py_VISIT(self->literals);
    Py_VISIT(self->enders);
    Py_VISIT(self->dict);
    return 0;
}

static int
HitCall_clear(HitCall *self)
{
    /* The reader first: a call made from a finalizer while this clears takes the fallback. */
    Py_CLEAR(self->reader);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->rest);
    Py_CLEAR(self->not_fresh);
    Py_CLEAR(self->literals);
    Py_CLEAR(self->enders);
    Py_CLEAR(self->dict);
    return 0;
}

static void
HitCall_dealloc(HitCall *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    HitCall_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A function's binding: itself on the class, a bound method on an instance. */
static PyObject *
HitCall_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *
HitCall_repr(HitCall *self)
{
    return PyObject_Repr(self->fallback);
}

/* Pickled by reference, as a function is: its module's attribute of its qualified name. */
static PyObject *
HitCall_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyObject_GetAttrString(self, "__qualname__");
}

static PyMethodDef HitCall_methods[] = {
    {"__reduce__", HitCall_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef HitCall_members[] = {
    {"reader", T_OBJECT_EX, offsetof(HitCall, reader), 0,
     "the chain's l1_hit (set by L1Reader.follow_l1_hit)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef HitCall_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HitCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tiered_cache._hitcall.HitCall",
    .tp_doc = "A @cache.cached function whose plain hits are answered in C.",
    .tp_basicsize = sizeof(HitCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = HitCall_new,
    .tp_dealloc = (destructor)HitCall_dealloc,
    .tp_traverse = (traverseproc)HitCall_traverse,
    .tp_clear = (inquiry)HitCall_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HitCall, vectorcall),
    .tp_descr_get = HitCall_descr_get,
    .tp_repr = (reprfunc)HitCall_repr,
    .tp_dictoffset = offsetof(HitCall, dict),
    .tp_weaklistoffset = offsetof(HitCall, weakreflist),
    .tp_methods = HitCall_methods,
    .tp_members = HitCall_members,
    .tp_getset = HitCall_getset,
};

static struct PyModuleDef hitcall_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tiered_cache._hitcall",
    .m_doc = "The plain hit of a @cache.cached function in C (see tiered_cache/decorator.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__hitcall(void)
{
    if (PyType_Ready(&HitCallType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hitcall_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&HitCallType);
    if (PyModule_AddObject(module, "HitCall", (PyObject *)&HitCallType) < 0) {
        Py_DECREF(&HitCallType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
