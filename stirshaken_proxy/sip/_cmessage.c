/* The compiled core: the per-message work of sip/message.py (indexing the header lines,
 * Via values, splitting header values, serialising an edited message, joining a header's
 * lines) and the transaction timers' heap.
 *
 * The Python implementation in message.py is the reference; this module gives the same
 * results (tests/sip/test_cores.py runs both on RFC 4475, the suite's messages and
 * generated ones, and compares every field). It never decides an error itself: where the
 * reference would raise, it returns False and the Python caller raises the same SipError
 * (or the Python callback it calls raises it), so every error text has one source.
 *
 * Only the CPython C API is used; every index is checked against the buffer's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* -- Header: one header line of the original message (message.Header's fields) -------- */

typedef struct {
    PyObject_HEAD
    PyObject *name;   /* canonical: lower case, compact form expanded */
    PyObject *value;  /* surrounding spaces and tabs stripped */
    Py_ssize_t start; /* offset of the line in the original bytes */
    Py_ssize_t end;   /* offset after its final CRLF */
} Header;

static void Header_dealloc(Header *self) {
    Py_XDECREF(self->name);
    Py_XDECREF(self->value);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Header_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "value", "start", "end", NULL};
    PyObject *name, *value;
    Py_ssize_t start, end;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UUnn", kwlist, &name, &value, &start, &end))
        return NULL;
    Header *self = (Header *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(name);
    Py_INCREF(value);
    self->name = name;
    self->value = value;
    self->start = start;
    self->end = end;
    return (PyObject *)self;
}

static PyObject *Header_repr(Header *self) {
    return PyUnicode_FromFormat("Header(%R, %R, %zd, %zd)", self->name, self->value,
                                self->start, self->end);
}

static PyMemberDef Header_members[] = {
    {"name", T_OBJECT_EX, offsetof(Header, name), READONLY, NULL},
    {"value", T_OBJECT_EX, offsetof(Header, value), READONLY, NULL},
    {"start", T_PYSSIZET, offsetof(Header, start), READONLY, NULL},
    {"end", T_PYSSIZET, offsetof(Header, end), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HeaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.sip._cmessage.Header",
    .tp_doc = "One header line (continuation lines included) of the original message.",
    .tp_basicsize = sizeof(Header),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Header_new,
    .tp_dealloc = (destructor)Header_dealloc,
    .tp_repr = (reprfunc)Header_repr,
    .tp_members = Header_members,
};

/* -- index_headers -------------------------------------------------------------------- */

static inline int is_ws(Py_UCS4 c) { return c == ' ' || c == '\t'; }

/* The offset of the next CRLF at or after i in [i, stop), or -1. */
static Py_ssize_t find_crlf(const unsigned char *p, Py_ssize_t i, Py_ssize_t stop) {
    while (i + 1 < stop) {
        const unsigned char *cr = memchr(p + i, '\r', (size_t)(stop - 1 - i));
        if (cr == NULL)
            return -1;
        i = cr - p;
        if (p[i + 1] == '\n')
            return i;
        i++;
    }
    return -1;
}

/* Header names as written -> their canonical names, for names of at most NAME_BYTES bytes:
 * a direct-mapped table, so that a name seen before costs no string, hash or dict lookup
 * (every message repeats the same dozen). The canonical name is a function of the bytes
 * alone (ParseCache.canonical), so an entry never goes stale; a name that canonical()
 * refuses is never entered. A slot holds a reference to its canonical name. */
#define NAME_SLOTS 256
#define NAME_BYTES 30
typedef struct {
    unsigned char len; /* 0: empty */
    unsigned char bytes[NAME_BYTES];
    PyObject *canonical;
} NameSlot;
static NameSlot name_slots[NAME_SLOTS];

static inline NameSlot *name_slot(const unsigned char *s, Py_ssize_t n) {
    unsigned h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return &name_slots[(h ^ (h >> 16)) & (NAME_SLOTS - 1)];
}

/* index_headers(raw, pos, stop, names, canonical, headers, index) -> bool, called by
 * parse_fast: index the header lines of raw[pos:stop] (each ending in CRLF, none folded) as
 * message._parse_headers does: append a Header per line to ``headers`` and its position to
 * ``index[name]``. ``names`` maps names as written to canonical names; ``canonical``
 * (ParseCache.canonical) is called for a name not in it and raises for a bad one. False
 * when a line has no name and colon. */
static PyObject *index_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "index_headers takes 7 arguments");
        return NULL;
    }
    PyObject *raw = args[0], *names = args[3], *canonical = args[4];
    PyObject *headers = args[5], *index = args[6];
    if (!PyBytes_Check(raw) || !PyDict_Check(names) || !PyList_Check(headers) ||
        !PyDict_Check(index)) {
        PyErr_SetString(PyExc_TypeError, "index_headers: bytes, int, int, dict, callable, "
                                         "list, dict");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    if (pos < 0 || stop > size || pos > stop) {
        PyErr_SetString(PyExc_ValueError, "index_headers: bad offsets");
        return NULL;
    }
    while (pos < stop) {
        Py_ssize_t eol = find_crlf(p, pos, stop);
        if (eol < 0) /* the section always ends in CRLF; a caller's mistake otherwise */
            eol = stop;
        const unsigned char *colon = memchr(p + pos, ':', (size_t)(eol - pos));
        if (colon == NULL || colon == p + pos)
            Py_RETURN_FALSE;
        Py_ssize_t name_end = colon - p, name_len = name_end - pos;
        NameSlot *slot = name_len <= NAME_BYTES ? name_slot(p + pos, name_len) : NULL;
        PyObject *name;
        if (slot != NULL && slot->len == name_len &&
            memcmp(slot->bytes, p + pos, (size_t)name_len) == 0) {
            name = slot->canonical;
            Py_INCREF(name);
        } else {
            PyObject *raw_name = PyUnicode_DecodeLatin1((const char *)p + pos, name_len, NULL);
            if (raw_name == NULL)
                return NULL;
            name = PyDict_GetItemWithError(names, raw_name); /* borrowed */
            if (name != NULL && PyObject_IsTrue(name) == 1) {
                Py_INCREF(name);
            } else {
                if (PyErr_Occurred()) {
                    Py_DECREF(raw_name);
                    return NULL;
                }
                name = PyObject_CallOneArg(canonical, raw_name);
                if (name == NULL) {
                    Py_DECREF(raw_name);
                    return NULL;
                }
                if (!PyUnicode_Check(name)) {
                    Py_DECREF(raw_name);
                    Py_DECREF(name);
                    PyErr_SetString(PyExc_TypeError, "canonical() must return a str");
                    return NULL;
                }
            }
            Py_DECREF(raw_name);
            if (slot != NULL && name_len > 0) {
                Py_INCREF(name);
                Py_XSETREF(slot->canonical, name);
                memcpy(slot->bytes, p + pos, (size_t)name_len);
                slot->len = (unsigned char)name_len;
            }
        }
        Py_ssize_t vs = name_end + 1, ve = eol;
        while (vs < ve && is_ws(p[vs]))
            vs++;
        while (ve > vs && is_ws(p[ve - 1]))
            ve--;
        PyObject *value = PyUnicode_DecodeLatin1((const char *)p + vs, ve - vs, NULL);
        if (value == NULL) {
            Py_DECREF(name);
            return NULL;
        }
        Header *h = PyObject_New(Header, &HeaderType);
        if (h == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            return NULL;
        }
        h->name = name;   /* the references are the Header's now */
        h->value = value;
        h->start = pos;
        h->end = eol + 2 <= stop ? eol + 2 : stop;
        PyObject *at = PyLong_FromSsize_t(PyList_GET_SIZE(headers));
        if (at == NULL) {
            Py_DECREF(h);
            return NULL;
        }
        int failed = PyList_Append(headers, (PyObject *)h);
        Py_DECREF(h);
        if (!failed) {
            PyObject *positions = PyDict_GetItemWithError(index, name); /* borrowed */
            if (positions != NULL) {
                failed = PyList_Append(positions, at);
            } else if (PyErr_Occurred()) {
                failed = -1;
            } else {
                PyObject *fresh = PyList_New(1);
                if (fresh == NULL) {
                    failed = -1;
                } else {
                    Py_INCREF(at);
                    PyList_SET_ITEM(fresh, 0, at);
                    failed = PyDict_SetItem(index, name, fresh);
                    Py_DECREF(fresh);
                }
            }
        }
        Py_DECREF(at);
        if (failed)
            return NULL;
        pos = eol + 2;
    }
    Py_RETURN_TRUE;
}

/* -- character classes (RFC 3261 §25.1) -------------------------------------------------- */

static inline int is_alnum(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_hex(unsigned char c) {
    return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}
/* token: alphanum and -.!%*_+`'~ (uri.TOKEN_CHARS) */
static inline int is_token_char(unsigned char c) {
    return is_alnum(c) || (c != 0 && strchr("-.!%*_+`'~", c) != NULL);
}
static int is_token(const unsigned char *p, Py_ssize_t n) {
    if (n <= 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!is_token_char(p[i]))
            return 0;
    return 1;
}
static inline int in_set(unsigned char c, const char *set) {
    return c != 0 && strchr(set, c) != NULL;
}

/* message._SIMPLE_SIP_URI, by hand: sips?:[userinfo@]host[:port](;param[=value])*, the
 * port of at most 5 digits (and <= 65535: a larger one is left to the general parser). */
static int simple_sip_uri(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i;
    if (n >= 4 && memcmp(p, "sip:", 4) == 0)
        i = 4;
    else if (n >= 5 && memcmp(p, "sips:", 5) == 0)
        i = 5;
    else
        return 0;
    const unsigned char *at = memchr(p + i, '@', (size_t)(n - i));
    if (at != NULL) {
        Py_ssize_t u = at - p;
        if (u == i)
            return 0;
        for (Py_ssize_t k = i; k < u; k++)
            if (!is_alnum(p[k]) && !in_set(p[k], "-_.!~*'()&=+$,%"))
                return 0;
        i = u + 1;
    }
    if (i < n && p[i] == '[') {
        Py_ssize_t k = i + 1;
        while (k < n && (is_hex(p[k]) || p[k] == ':' || p[k] == '.'))
            k++;
        if (k == i + 1 || k >= n || p[k] != ']')
            return 0;
        i = k + 1;
    } else {
        if (i >= n || !is_alnum(p[i]))
            return 0;
        i++;
        while (i < n && (is_alnum(p[i]) || p[i] == '.' || p[i] == '-'))
            i++;
    }
    if (i < n && p[i] == ':') {
        Py_ssize_t k = i + 1;
        long port = 0;
        while (k < n && is_digit(p[k]) && k - i <= 5) {
            port = port * 10 + (p[k] - '0');
            k++;
        }
        if (k == i + 1 || (k < n && is_digit(p[k])) || port > 65535)
            return 0;
        i = k;
    }
    while (i < n) {
        if (p[i] != ';')
            return 0;
        i++;
        const char *pc = "-.!%*_+`'~[]/:&$";
        Py_ssize_t k = i;
        while (k < n && (is_alnum(p[k]) || in_set(p[k], pc)))
            k++;
        if (k == i)
            return 0;
        if (k < n && p[k] == '=') {
            Py_ssize_t v = k + 1;
            while (v < n && (is_alnum(p[v]) || in_set(p[v], pc)))
                v++;
            if (v == k + 1)
                return 0;
            k = v;
        }
        i = k;
    }
    return 1;
}

/* -- via_fields ------------------------------------------------------------------------ */

PyDoc_STRVAR(via_fields_doc,
"via_fields(text) -> (transport, host, port, params) or None\n\n"
"A Via value of the everyday form SIP/2.0/TRANSPORT host[:port][;name[=value]]... (no\n"
"spaces but the one after the transport, ASCII only, names tokens) as message.Via parses\n"
"it; None for any other form, which the Python parser then reads (or refuses).");

static PyObject *via_fields(PyObject *module, PyObject *text) {
    if (!PyUnicode_Check(text) || PyUnicode_READY(text) < 0 ||
        PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND)
        Py_RETURN_NONE;
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n < 9 || memcmp(p, "SIP/2.0/", 8) != 0)
        Py_RETURN_NONE;
    Py_ssize_t i = 8, t0 = 8;
    while (i < n && is_token_char(p[i]))
        i++;
    Py_ssize_t t1 = i;
    if (t1 == t0 || i >= n || !is_ws(p[i]))
        Py_RETURN_NONE;
    while (i < n && is_ws(p[i]))
        i++;
    Py_ssize_t h0 = i;
    if (i < n && p[i] == '[') {
        i++;
        while (i < n && (is_hex(p[i]) || p[i] == ':' || p[i] == '.'))
            i++;
        if (i == h0 + 1 || i >= n || p[i] != ']')
            Py_RETURN_NONE;
        i++;
    } else {
        while (i < n && p[i] > 0x20 && p[i] < 0x7f && p[i] != ';' && p[i] != ':' &&
               p[i] != '[' && p[i] != ']')
            i++;
        if (i == h0)
            Py_RETURN_NONE;
    }
    Py_ssize_t h1 = i;
    long port = -1;
    if (i < n && p[i] == ':') {
        Py_ssize_t k = i + 1;
        port = 0;
        while (k < n && is_digit(p[k]) && k - i <= 5) {
            port = port * 10 + (p[k] - '0');
            k++;
        }
        if (k == i + 1 || port > 65535)
            Py_RETURN_NONE;
        i = k;
    }
    if (i < n && p[i] != ';')
        Py_RETURN_NONE;
    PyObject *params = PyDict_New();
    if (params == NULL)
        return NULL;
    while (i < n) { /* p[i] == ';' */
        Py_ssize_t k0 = ++i;
        while (i < n && is_token_char(p[i]))
            i++;
        Py_ssize_t k1 = i;
        PyObject *value;
        if (k1 == k0)
            goto other_form;
        if (i < n && p[i] == '=') {
            Py_ssize_t v0 = ++i;
            while (i < n && p[i] != ';') {
                if (p[i] <= 0x20 || p[i] >= 0x7f)
                    goto other_form;
                i++;
            }
            value = PyUnicode_DecodeLatin1((const char *)p + v0, i - v0, NULL);
            if (value == NULL)
                goto failed;
        } else if (i < n && p[i] != ';') {
            goto other_form;
        } else {
            value = Py_None;
            Py_INCREF(value);
        }
        char name[64];
        if (k1 - k0 >= (Py_ssize_t)sizeof(name)) {
            Py_DECREF(value);
            goto other_form;
        }
        for (Py_ssize_t k = k0; k < k1; k++)
            name[k - k0] = (char)((p[k] >= 'A' && p[k] <= 'Z') ? p[k] + 32 : p[k]);
        PyObject *key = PyUnicode_DecodeLatin1(name, k1 - k0, NULL);
        if (key == NULL) {
            Py_DECREF(value);
            goto failed;
        }
        int bad = PyDict_SetItem(params, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (bad)
            goto failed;
    }
    char buf[256];
    if (t1 - t0 >= (Py_ssize_t)sizeof(buf) || h1 - h0 >= (Py_ssize_t)sizeof(buf))
        goto other_form;
    for (Py_ssize_t k = t0; k < t1; k++)
        buf[k - t0] = (char)((p[k] >= 'a' && p[k] <= 'z') ? p[k] - 32 : p[k]);
    PyObject *transport = PyUnicode_DecodeLatin1(buf, t1 - t0, NULL);
    for (Py_ssize_t k = h0; k < h1; k++)
        buf[k - h0] = (char)((p[k] >= 'A' && p[k] <= 'Z') ? p[k] + 32 : p[k]);
    PyObject *host = PyUnicode_DecodeLatin1(buf, h1 - h0, NULL);
    PyObject *port_obj = port >= 0 ? PyLong_FromLong(port) : (Py_INCREF(Py_None), Py_None);
    if (transport == NULL || host == NULL || port_obj == NULL) {
        Py_XDECREF(transport);
        Py_XDECREF(host);
        Py_XDECREF(port_obj);
        goto failed;
    }
    PyObject *fields = PyTuple_New(4);
    if (fields == NULL) {
        Py_DECREF(transport);
        Py_DECREF(host);
        Py_DECREF(port_obj);
        goto failed;
    }
    PyTuple_SET_ITEM(fields, 0, transport); /* the references are the tuple's now */
    PyTuple_SET_ITEM(fields, 1, host);
    PyTuple_SET_ITEM(fields, 2, port_obj);
    PyTuple_SET_ITEM(fields, 3, params);
    return fields;
other_form:
    Py_DECREF(params);
    Py_RETURN_NONE;
failed:
    Py_DECREF(params);
    return NULL;
}

/* -- parse_fast ------------------------------------------------------------------------ */

static PyObject *s_is_request, *s_method, *s_uri, *s_status, *s_reason, *s_line_end,
    *s_head_end, *s_body_start, *s_body_end, *s_call_id, *s_cseq, *s_cseq_method, *s_headers,
    *s_index;
static PyObject *n_via, *n_from, *n_to, *n_call_id, *n_cseq, *n_max_forwards,
    *n_content_length, *n_contact;
static PyObject *v_text, *v_transport, *v_host, *v_port, *v_params, *v_branch,
    *v_rfc3261_branch, *v_top_via, *v_comma, *v_empty;
static PyObject *split_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

static int set_ssize(PyObject *obj, PyObject *name, Py_ssize_t v) {
    PyObject *o = PyLong_FromSsize_t(v);
    if (o == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, o);
    Py_DECREF(o);
    return r;
}

static int set_text(PyObject *obj, PyObject *name, const unsigned char *p, Py_ssize_t n) {
    PyObject *o = PyUnicode_DecodeLatin1((const char *)p, n, NULL);
    if (o == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, o);
    Py_DECREF(o);
    return r;
}

/* The value of the first line of header ``name`` (a borrowed str), or NULL (no error) if
 * the message has none; *count gets how many lines it has. */
static PyObject *first_value(PyObject *headers, PyObject *index, PyObject *name,
                             Py_ssize_t *count) {
    PyObject *positions = PyDict_GetItemWithError(index, name);
    *count = 0;
    if (positions == NULL || !PyList_Check(positions) || PyList_GET_SIZE(positions) == 0)
        return NULL;
    *count = PyList_GET_SIZE(positions);
    Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(positions, 0));
    if (at < 0 || at >= PyList_GET_SIZE(headers))
        return NULL;
    PyObject *h = PyList_GET_ITEM(headers, at);
    if (Py_TYPE(h) != &HeaderType)
        return NULL;
    return ((Header *)h)->value;
}

static int all_digits(PyObject *text) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n == 0 || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND)
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!is_digit(p[i]))
            return 0;
    return 1;
}

/* Whether the cache holds a From/To value without its final ";tag=TOKEN" (message.untagged:
 * no other "tag" before it). 0 when it does not, or the value has no such tag. */
static int untagged_known(PyObject *value, PyObject *known) {
    if (PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND)
        return 0;
    const unsigned char *v = PyUnicode_1BYTE_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value), at = -1;
    for (Py_ssize_t i = n - 5; i >= 0; i--)
        if (memcmp(v + i, ";tag=", 5) == 0) {
            at = i;
            break;
        }
    if (at < 0 || !is_token(v + at + 5, n - at - 5))
        return 0;
    for (Py_ssize_t i = 0; i + 3 <= at; i++)
        if ((v[i] | 0x20) == 't' && (v[i + 1] | 0x20) == 'a' && (v[i + 2] | 0x20) == 'g')
            return 0;
    PyObject *head = PyUnicode_Substring(value, 0, at);
    if (head == NULL)
        return -1;
    int r = PySet_Contains(known, head);
    Py_DECREF(head);
    return r;
}

/* Whether every From, To and Contact value is one the cache already found well-formed. */
static int addresses_known(PyObject *headers, PyObject *index, PyObject *known) {
    PyObject *names[3] = {n_from, n_to, n_contact};
    for (int k = 0; k < 3; k++) {
        PyObject *positions = PyDict_GetItemWithError(index, names[k]);
        if (positions == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(positions); j++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(positions, j));
            if (at < 0 || at >= PyList_GET_SIZE(headers))
                return 0;
            PyObject *h = PyList_GET_ITEM(headers, at);
            if (Py_TYPE(h) != &HeaderType)
                return 0;
            PyObject *value = ((Header *)h)->value;
            int r = PySet_Contains(known, value);
            if (r == 0 && k < 2)
                r = untagged_known(value, known);
            if (r != 1)
                return r;
        }
    }
    return 1;
}

/* The top Via of a message parse_fast accepted, as message.SipMessage.top_via makes it, put
 * in msg._top_via: an instance of ``via_class`` (message.Via) with its slots set from
 * via_fields. A value of another form is left to the caller (msg._top_via stays None): the
 * reference reads it, or refuses it. 0, or -1 with an exception set. */
static int set_top_via(PyObject *module, PyObject *msg, PyObject *headers, PyObject *index,
                       PyObject *via_class) {
    Py_ssize_t count;
    PyObject *first = first_value(headers, index, n_via, &count);
    if (first == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *text;
    int has_comma = PyUnicode_FindChar(first, ',', 0, PyUnicode_GET_LENGTH(first), 1) >= 0;
    if (has_comma) {
        PyObject *argv[2] = {first, v_comma};
        PyObject *values = split_values(module, argv, 2);
        if (values == NULL)
            return -1;
        if (PyList_GET_SIZE(values) == 0) {
            Py_DECREF(values);
            return 0;
        }
        text = PyList_GET_ITEM(values, 0);
        Py_INCREF(text);
        Py_DECREF(values);
    } else {
        text = first;
        Py_INCREF(text);
    }
    PyObject *fields = via_fields(module, text);
    if (fields == NULL || fields == Py_None) {
        Py_DECREF(text);
        Py_XDECREF(fields);
        return fields == NULL ? -1 : 0;
    }
    PyObject *params = PyTuple_GET_ITEM(fields, 3);
    PyObject *branch = PyDict_GetItemWithError(params, v_branch);
    if (branch == NULL && PyErr_Occurred())
        goto failed_fields;
    if (branch == NULL || branch == Py_None || PyUnicode_GET_LENGTH(branch) == 0)
        branch = v_empty;
    Py_ssize_t blen = PyUnicode_GET_LENGTH(branch);
    int rfc3261 = blen > 7 && PyUnicode_KIND(branch) == PyUnicode_1BYTE_KIND &&
                  memcmp(PyUnicode_1BYTE_DATA(branch), "z9hG4bK", 7) == 0;
    PyTypeObject *type = (PyTypeObject *)via_class;
    PyObject *via = type->tp_alloc(type, 0);
    if (via == NULL)
        goto failed_fields;
    if (PyObject_SetAttr(via, v_text, text) < 0 ||
        PyObject_SetAttr(via, v_transport, PyTuple_GET_ITEM(fields, 0)) < 0 ||
        PyObject_SetAttr(via, v_host, PyTuple_GET_ITEM(fields, 1)) < 0 ||
        PyObject_SetAttr(via, v_port, PyTuple_GET_ITEM(fields, 2)) < 0 ||
        PyObject_SetAttr(via, v_params, params) < 0 ||
        PyObject_SetAttr(via, v_branch, branch) < 0 ||
        PyObject_SetAttr(via, v_rfc3261_branch, rfc3261 ? Py_True : Py_False) < 0 ||
        PyObject_SetAttr(msg, v_top_via, via) < 0) {
        Py_DECREF(via);
        goto failed_fields;
    }
    Py_DECREF(via);
    Py_DECREF(fields);
    Py_DECREF(text);
    return 0;
failed_fields:
    Py_DECREF(fields);
    Py_DECREF(text);
    return -1;
}

PyDoc_STRVAR(parse_fast_doc,
"parse_fast(msg, data, max_size, stream, names, canonical, addresses, check_uri,\n"
"           check_addresses, via_class) -> bool\n\n"
"Fill the fresh SipMessage ``msg`` from ``data`` as message.parse_message does, for a\n"
"message of the everyday shape. False (or a SipError from a callback) for any other\n"
"message: the caller then parses it with the reference parser, which gives the answer or\n"
"the exact error. ``check_uri(uri)`` checks a Request-URI the simple form does not cover;\n"
"``check_addresses(msg)`` checks From, To and Contact values the ``addresses`` set does\n"
"not hold. The top Via, of the everyday form, is made too (an instance of ``via_class``);\n"
"of any other form it is left to the caller.");

static PyObject *parse_fast(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !PyType_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError, "parse_fast takes 10 arguments, the last a class");
        return NULL;
    }
    PyObject *msg = args[0], *data = args[1], *names = args[4], *canonical = args[5];
    PyObject *known = args[6], *check_uri = args[7], *check_addresses = args[8];
    if (!PyBytes_Check(data) || !PyDict_Check(names) || !PyAnySet_Check(known)) {
        PyErr_SetString(PyExc_TypeError, "parse_fast: bad argument types");
        return NULL;
    }
    Py_ssize_t max_size = PyLong_AsSsize_t(args[2]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    int stream = PyObject_IsTrue(args[3]);
    if (stream < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n > max_size)
        Py_RETURN_FALSE;
    /* the header section ends at the first empty line */
    Py_ssize_t end = -1;
    for (Py_ssize_t i = find_crlf(p, 0, n); i >= 0; i = find_crlf(p, i + 2, n)) {
        if (i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n') {
            end = i;
            break;
        }
    }
    if (end < 0)
        Py_RETURN_FALSE; /* the datagram form without an empty line: the reference's case */
    Py_ssize_t head_end = end + 2, body_start = end + 4;
    if (memchr(p, '\0', (size_t)head_end) != NULL)
        Py_RETURN_FALSE;
    Py_ssize_t eol = find_crlf(p, 0, head_end);
    if (eol <= 0)
        Py_RETURN_FALSE;
    Py_ssize_t line_end = eol + 2;
    /* folded lines: the reference unfolds them */
    if (line_end < head_end && is_ws(p[line_end]))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = find_crlf(p, line_end, head_end); i >= 0 && i + 2 < head_end;
         i = find_crlf(p, i + 2, head_end))
        if (is_ws(p[i + 2]))
            Py_RETURN_FALSE;
    PyObject *headers = PyObject_GetAttr(msg, s_headers);
    PyObject *index = PyObject_GetAttr(msg, s_index);
    PyObject *result = NULL;
    if (headers == NULL || index == NULL || !PyList_Check(headers) || !PyDict_Check(index)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "parse_fast: msg.headers, msg.index");
        goto done;
    }
    if (set_ssize(msg, s_line_end, line_end) < 0 || set_ssize(msg, s_head_end, head_end) < 0)
        goto done;
    PyObject *argv[7] = {data, NULL, NULL, names, canonical, headers, index};
    argv[1] = PyLong_FromSsize_t(line_end);
    argv[2] = PyLong_FromSsize_t(head_end);
    PyObject *indexed = NULL;
    if (argv[1] != NULL && argv[2] != NULL)
        indexed = index_headers(module, argv, 7);
    Py_XDECREF(argv[1]);
    Py_XDECREF(argv[2]);
    if (indexed == NULL)
        goto done;
    int all_indexed = indexed == Py_True;
    Py_DECREF(indexed);
    if (!all_indexed)
        goto other_form;
    /* the start line */
    int is_response = eol >= 4 && memcmp(p, "SIP/", 4) == 0;
    const unsigned char *method = NULL;
    Py_ssize_t method_len = 0;
    if (is_response) {
        /* SIP/2.0 SP 3DIGIT SP reason */
        if (eol < 12 || memcmp(p, "SIP/2.0 ", 8) != 0 || !is_digit(p[8]) || !is_digit(p[9]) ||
            !is_digit(p[10]) || p[11] != ' ')
            goto other_form;
        int status = (p[8] - '0') * 100 + (p[9] - '0') * 10 + (p[10] - '0');
        if (status < 100 || status > 699)
            goto other_form;
        PyObject *st = PyLong_FromLong(status);
        if (st == NULL || PyObject_SetAttr(msg, s_status, st) < 0) {
            Py_XDECREF(st);
            goto done;
        }
        Py_DECREF(st);
        if (set_text(msg, s_reason, p + 12, eol - 12) < 0 ||
            PyObject_SetAttr(msg, s_is_request, Py_False) < 0)
            goto done;
    } else {
        const unsigned char *sp1 = memchr(p, ' ', (size_t)eol);
        if (sp1 == NULL)
            goto other_form;
        const unsigned char *sp2 = memchr(sp1 + 1, ' ', (size_t)(p + eol - sp1 - 1));
        if (sp2 == NULL || memchr(sp2 + 1, ' ', (size_t)(p + eol - sp2 - 1)) != NULL)
            goto other_form;
        method = p;
        method_len = sp1 - p;
        const unsigned char *uri = sp1 + 1;
        Py_ssize_t uri_len = sp2 - uri;
        if (p + eol - (sp2 + 1) != 7 || memcmp(sp2 + 1, "SIP/2.0", 7) != 0 ||
            !is_token(method, method_len) || uri_len == 0 || uri[0] == '<')
            goto other_form;
        if (set_text(msg, s_method, method, method_len) < 0)
            goto done;
        PyObject *u = PyUnicode_DecodeLatin1((const char *)uri, uri_len, NULL);
        if (u == NULL)
            goto done;
        int failed = PyObject_SetAttr(msg, s_uri, u);
        if (!failed && !simple_sip_uri(uri, uri_len)) {
            PyObject *r = PyObject_CallOneArg(check_uri, u); /* a SipError: the caller */
            failed = r == NULL;                              /* falls back to the reference */
            Py_XDECREF(r);
        }
        Py_DECREF(u);
        if (failed)
            goto done;
    }
    /* required and single headers */
    PyObject *required[5] = {n_via, n_from, n_to, n_call_id, n_cseq};
    for (int k = 0; k < 5; k++) {
        int r = PyDict_Contains(index, required[k]);
        if (r < 0)
            goto done;
        if (r == 0)
            goto other_form;
    }
    PyObject *single[6] = {n_from, n_to, n_call_id, n_cseq, n_max_forwards, n_content_length};
    for (int k = 0; k < 6; k++) {
        PyObject *positions = PyDict_GetItemWithError(index, single[k]);
        if (positions == NULL && PyErr_Occurred())
            goto done;
        if (positions != NULL && PyList_GET_SIZE(positions) > 1)
            goto other_form;
    }
    /* CSeq: number SP method */
    Py_ssize_t count;
    PyObject *cseq = first_value(headers, index, n_cseq, &count);
    if (cseq == NULL || PyUnicode_KIND(cseq) != PyUnicode_1BYTE_KIND)
        goto other_form;
    {
        const unsigned char *c = PyUnicode_1BYTE_DATA(cseq);
        Py_ssize_t cn = PyUnicode_GET_LENGTH(cseq), k = 0;
        unsigned long long number = 0;
        while (k < cn && is_digit(c[k]) && k < 11) {
            number = number * 10 + (unsigned long long)(c[k] - '0');
            k++;
        }
        if (k == 0 || k >= cn || c[k] != ' ' || number > 4294967295ULL)
            goto other_form;
        k++;
        Py_ssize_t m0 = k, m1 = cn;
        while (m0 < m1 && is_ws(c[m0]))
            m0++;
        if (!is_token(c + m0, m1 - m0))
            goto other_form;
        if (!is_response && (m1 - m0 != method_len || memcmp(c + m0, method, (size_t)method_len)))
            goto other_form;
        PyObject *num = PyLong_FromUnsignedLongLong(number);
        if (num == NULL || PyObject_SetAttr(msg, s_cseq, num) < 0) {
            Py_XDECREF(num);
            goto done;
        }
        Py_DECREF(num);
        if (set_text(msg, s_cseq_method, c + m0, m1 - m0) < 0)
            goto done;
        if (is_response && set_text(msg, s_method, c + m0, m1 - m0) < 0)
            goto done;
    }
    PyObject *call_id = first_value(headers, index, n_call_id, &count);
    if (call_id == NULL || PyUnicode_GET_LENGTH(call_id) == 0)
        goto other_form;
    if (PyObject_SetAttr(msg, s_call_id, call_id) < 0)
        goto done;
    PyObject *mf = first_value(headers, index, n_max_forwards, &count);
    if (mf != NULL && !all_digits(mf))
        goto other_form;
    int known_all = addresses_known(headers, index, known);
    if (known_all < 0)
        goto done;
    if (!known_all) {
        PyObject *r = PyObject_CallOneArg(check_addresses, msg);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    /* the body: Content-Length, or the rest of the datagram */
    Py_ssize_t available = n - body_start, length;
    PyObject *cl = first_value(headers, index, n_content_length, &count);
    if (cl != NULL) {
        if (!all_digits(cl) || PyUnicode_GET_LENGTH(cl) > 9)
            goto other_form;
        const unsigned char *d = PyUnicode_1BYTE_DATA(cl);
        length = 0;
        for (Py_ssize_t k = 0; k < PyUnicode_GET_LENGTH(cl); k++)
            length = length * 10 + (d[k] - '0');
        if (length > available)
            goto other_form;
    } else if (stream) {
        goto other_form;
    } else {
        length = available;
    }
    if (set_ssize(msg, s_body_start, body_start) < 0 ||
        set_ssize(msg, s_body_end, body_start + length) < 0 ||
        set_top_via(module, msg, headers, index, args[9]) < 0)
        goto done;
    result = Py_True;
    Py_INCREF(result);
    goto done;
other_form:
    result = Py_False;
    Py_INCREF(result);
done:
    Py_XDECREF(headers);
    Py_XDECREF(index);
    return result;
}

/* -- split_values ---------------------------------------------------------------------- */

PyDoc_STRVAR(split_values_doc,
"split_values(value, sep) -> list of str\n\n"
"uri.split_values's split: the elements between the separators ``sep`` (one character)\n"
"outside quoted strings and <...>, each stripped of spaces and tabs. A quoted string\n"
"ends at its closing quote (a backslash escapes any character but a line feed) or at the\n"
"end; <...> at its '>' or at the end, as the reference's regular expression reads them.");

static int append_stripped(PyObject *out, PyObject *value, int kind, const void *data,
                           Py_ssize_t a, Py_ssize_t b) {
    while (a < b && is_ws(PyUnicode_READ(kind, data, a)))
        a++;
    while (b > a && is_ws(PyUnicode_READ(kind, data, b - 1)))
        b--;
    PyObject *item = PyUnicode_Substring(value, a, b);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *split_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1]) ||
        PyUnicode_READY(args[0]) < 0 || PyUnicode_READY(args[1]) < 0 ||
        PyUnicode_GET_LENGTH(args[1]) != 1 ||
        (PyUnicode_READ_CHAR(args[1], 0) != ',' && PyUnicode_READ_CHAR(args[1], 0) != ';')) {
        PyErr_SetString(PyExc_TypeError, "split_values(value: str, sep: ',' or ';')");
        return NULL;
    }
    PyObject *value = args[0];
    Py_UCS4 sep = PyUnicode_READ_CHAR(args[1], 0);
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    while (i < n) {
        if (PyUnicode_READ(kind, data, i) == sep) {
            i++;
            continue;
        }
        Py_ssize_t start = i;  /* an element: up to the next separator outside "..." <...> */
        while (i < n) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c == sep)
                break;
            i++;
            if (c == '"') {
                while (i < n) {
                    Py_UCS4 q = PyUnicode_READ(kind, data, i);
                    if (q == '"') {
                        i++;
                        break;
                    }
                    if (q == '\\') {
                        if (i + 1 >= n || PyUnicode_READ(kind, data, i + 1) == '\n')
                            break;  /* not an escape: the quoted string ends here */
                        i += 2;
                    } else {
                        i++;
                    }
                }
            } else if (c == '<') {
                while (i < n && PyUnicode_READ(kind, data, i) != '>')
                    i++;
                if (i < n)
                    i++;
            }
        }
        if (append_stripped(out, value, kind, data, start, i) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* -- assemble: SipMessage.serialize ------------------------------------------------------ */

PyDoc_STRVAR(assemble_doc,
"assemble(raw, start_line, line_end, prepend, edits, headers, head_end, append,\n"
"         has_content_length, body_start, body_end) -> bytes\n\n"
"SipMessage.serialize's bytes from its fields: the start line (``start_line``, or\n"
"raw[:line_end]), the prepended lines last-first, the header section raw[line_end:head_end]\n"
"with each edited line (``edits``: header index -> replacement bytes, or None to remove it)\n"
"in place of headers[i]'s raw[start:end], the appended lines, a Content-Length line if the\n"
"message has none, the empty line, and the body raw[body_start:body_end]. Offsets are\n"
"clamped as Python's slices clamp them.");

/* A piece of the output: a pointer into a bytes object and a length. */
typedef struct {
    const char *p;
    Py_ssize_t n;
} Piece;

typedef struct {
    Piece *items;
    Py_ssize_t len, cap, total;
    Piece small[32];
} Pieces;

static void pieces_init(Pieces *ps) {
    ps->items = ps->small;
    ps->len = ps->total = 0;
    ps->cap = 32;
}

static void pieces_free(Pieces *ps) {
    if (ps->items != ps->small)
        PyMem_Free(ps->items);
}

/* The pieces copied, in order, into one new bytes object. */
static PyObject *pieces_join(const Pieces *ps) {
    PyObject *result = PyBytes_FromStringAndSize(NULL, ps->total);
    if (result == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < ps->len; i++) {
        memcpy(w, ps->items[i].p, (size_t)ps->items[i].n);
        w += ps->items[i].n;
    }
    return result;
}

static int pieces_add(Pieces *ps, const char *p, Py_ssize_t n) {
    if (n <= 0)
        return 0;
    if (ps->len == ps->cap) {
        Py_ssize_t cap = ps->cap * 2;
        Piece *items = PyMem_Malloc((size_t)cap * sizeof(Piece));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(items, ps->items, (size_t)ps->len * sizeof(Piece));
        if (ps->items != ps->small)
            PyMem_Free(ps->items);
        ps->items = items;
        ps->cap = cap;
    }
    ps->items[ps->len].p = p;
    ps->items[ps->len].n = n;
    ps->len++;
    if (ps->total > PY_SSIZE_T_MAX - n) {
        PyErr_SetString(PyExc_OverflowError, "message too large");
        return -1;
    }
    ps->total += n;
    return 0;
}

/* raw[a:b] as Python slices it (a, b >= 0). */
static int pieces_slice(Pieces *ps, const char *raw, Py_ssize_t size, Py_ssize_t a,
                        Py_ssize_t b) {
    if (a > size)
        a = size;
    if (b > size)
        b = size;
    return b > a ? pieces_add(ps, raw + a, b - a) : 0;
}

static int pieces_bytes(Pieces *ps, PyObject *item) {
    if (!PyBytes_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "header lines must be bytes");
        return -1;
    }
    return pieces_add(ps, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item));
}

/* headers[key]'s (start, end): a compiled Header's fields, else the attributes; an error
 * for an index out of range or a negative offset. */
static int header_span(PyObject *headers, PyObject *key, Py_ssize_t *start, Py_ssize_t *end) {
    Py_ssize_t i = PyLong_AsSsize_t(key);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0 || i >= PyList_GET_SIZE(headers)) {
        PyErr_SetString(PyExc_IndexError, "header index out of range");
        return -1;
    }
    PyObject *h = PyList_GET_ITEM(headers, i);
    if (Py_IS_TYPE(h, &HeaderType)) {
        *start = ((Header *)h)->start;
        *end = ((Header *)h)->end;
    } else {
        PyObject *s = PyObject_GetAttrString(h, "start");
        PyObject *e = s != NULL ? PyObject_GetAttrString(h, "end") : NULL;
        if (e != NULL) {
            *start = PyLong_AsSsize_t(s);
            *end = PyLong_AsSsize_t(e);
        }
        Py_XDECREF(s);
        Py_XDECREF(e);
        if (e == NULL || PyErr_Occurred())
            return -1;
    }
    if (*start < 0 || *end < 0) {
        PyErr_SetString(PyExc_ValueError, "negative header offset");
        return -1;
    }
    return 0;
}

static PyObject *assemble(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11 || !PyBytes_Check(args[0]) || !PyList_Check(args[3]) ||
        !PyDict_Check(args[4]) || !PyList_Check(args[5]) || !PyList_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "assemble: bad arguments");
        return NULL;
    }
    PyObject *raw = args[0], *start_line = args[1], *prepend = args[3], *edits = args[4],
             *headers = args[5], *append = args[7];
    Py_ssize_t line_end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t head_end = PyLong_AsSsize_t(args[6]);
    int has_cl = PyObject_IsTrue(args[8]);
    Py_ssize_t body_start = PyLong_AsSsize_t(args[9]);
    Py_ssize_t body_end = PyLong_AsSsize_t(args[10]);
    if (PyErr_Occurred() || has_cl < 0)
        return NULL;
    if (line_end < 0 || head_end < 0 || body_start < 0 || body_end < 0) {
        PyErr_SetString(PyExc_ValueError, "assemble: negative offset");
        return NULL;
    }
    const char *p = PyBytes_AS_STRING(raw);
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    Pieces ps;
    pieces_init(&ps);
    PyObject *keys = NULL, *result = NULL;
    char cl_line[64];

    if (start_line == Py_None) {
        if (pieces_slice(&ps, p, size, 0, line_end) < 0)
            goto done;
    } else if (pieces_bytes(&ps, start_line) < 0) {
        goto done;
    }
    for (Py_ssize_t i = PyList_GET_SIZE(prepend) - 1; i >= 0; i--)
        if (pieces_bytes(&ps, PyList_GET_ITEM(prepend, i)) < 0)
            goto done;
    Py_ssize_t pos = line_end;
    if (PyDict_GET_SIZE(edits) > 0) {
        keys = PyDict_Keys(edits);
        if (keys == NULL || PyList_Sort(keys) < 0)
            goto done;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(keys); k++) {
            PyObject *key = PyList_GET_ITEM(keys, k);
            Py_ssize_t start, end;
            if (header_span(headers, key, &start, &end) < 0 ||
                pieces_slice(&ps, p, size, pos, start) < 0)
                goto done;
            PyObject *edit = PyDict_GetItemWithError(edits, key);
            if (edit == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_KeyError, "edit vanished");
                goto done;
            }
            if (edit != Py_None && pieces_bytes(&ps, edit) < 0)
                goto done;
            pos = end;
        }
    }
    if (pieces_slice(&ps, p, size, pos, head_end) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(append); i++)
        if (pieces_bytes(&ps, PyList_GET_ITEM(append, i)) < 0)
            goto done;
    if (!has_cl) {
        int n = snprintf(cl_line, sizeof cl_line, "Content-Length: %zd\r\n",
                         body_end - body_start);
        if (pieces_add(&ps, cl_line, n) < 0)
            goto done;
    }
    if (pieces_add(&ps, "\r\n", 2) < 0 || pieces_slice(&ps, p, size, body_start, body_end) < 0)
        goto done;
    result = pieces_join(&ps);
done:
    Py_XDECREF(keys);
    pieces_free(&ps);
    return result;
}

/* -- joined_lines: SipMessage.joined ----------------------------------------------------- */

PyDoc_STRVAR(joined_lines_doc,
"joined_lines(raw, headers, positions, edits) -> bytes\n\n"
"SipMessage.joined's bytes: the lines raw[start:end] of headers[i] for each i of\n"
"``positions`` (None: no line), each replaced by edits[i] when ``edits`` has it (None there:\n"
"the line is left out), one after another.");

static PyObject *joined_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyList_Check(args[1]) ||
        (args[2] != Py_None && !PyList_Check(args[2])) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "joined_lines: bad arguments");
        return NULL;
    }
    PyObject *raw = args[0], *headers = args[1], *positions = args[2], *edits = args[3];
    if (positions == Py_None)
        return PyBytes_FromStringAndSize(NULL, 0);
    const char *p = PyBytes_AS_STRING(raw);
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    Pieces ps;
    pieces_init(&ps);
    PyObject *result = NULL;
    int edited = PyDict_GET_SIZE(edits) > 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(positions); k++) {
        PyObject *key = PyList_GET_ITEM(positions, k);
        if (edited) {
            PyObject *edit = PyDict_GetItemWithError(edits, key);
            if (edit != NULL) {
                if (edit != Py_None && pieces_bytes(&ps, edit) < 0)
                    goto done;
                continue;
            }
            if (PyErr_Occurred())
                goto done;
        }
        Py_ssize_t start, end;
        if (header_span(headers, key, &start, &end) < 0 ||
            pieces_slice(&ps, p, size, start, end) < 0)
            goto done;
    }
    result = pieces_join(&ps);
done:
    pieces_free(&ps);
    return result;
}

/* -- TimerHeap: transaction timers (transaction/timers.py's TimerHeap is the reference) --
 *
 * A binary heap of (when, seq, transaction, timer) kept in one C array: no tuple per
 * timer for the allocator and the garbage collector (a running proxy holds hundreds of
 * thousands), and no tuple comparisons. Cancelling is lazy as in the reference: an entry
 * counts only while transaction.deadlines[timer] == when. Every entry is taken off the
 * heap before any Python code runs (the dict lookup may run __eq__), so that code may
 * push and pop freely. */

typedef struct {
    double when;
    unsigned long long seq;
    PyObject *txn;
    PyObject *timer;
} TimerEntry;

typedef struct {
    PyObject_HEAD
    TimerEntry *entries;
    Py_ssize_t size, capacity;
    unsigned long long seq;
} TimerHeapObject;

static PyObject *s_deadlines;

static inline int entry_before(const TimerEntry *a, const TimerEntry *b) {
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_sift_up(TimerEntry *e, Py_ssize_t i) {
    TimerEntry item = e[i];
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!entry_before(&item, &e[parent]))
            break;
        e[i] = e[parent];
        i = parent;
    }
    e[i] = item;
}

static void heap_sift_down(TimerEntry *e, Py_ssize_t size, Py_ssize_t i) {
    TimerEntry item = e[i];
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= size)
            break;
        if (child + 1 < size && entry_before(&e[child + 1], &e[child]))
            child++;
        if (!entry_before(&e[child], &item))
            break;
        e[i] = e[child];
        i = child;
    }
    e[i] = item;
}

/* Take the earliest entry off the heap (its references move to *out). size > 0. After a
 * peak the array gives half its memory back once it is a quarter full. */
static void heap_pop(TimerHeapObject *self, TimerEntry *out) {
    *out = self->entries[0];
    self->size--;
    if (self->size > 0) {
        self->entries[0] = self->entries[self->size];
        heap_sift_down(self->entries, self->size, 0);
    }
    if (self->capacity > 1024 && self->size < self->capacity / 4) {
        TimerEntry *smaller = PyMem_Realloc(self->entries,
                                            (self->capacity / 2) * sizeof(TimerEntry));
        if (smaller != NULL) {  /* (when it fails, the larger array serves on) */
            self->entries = smaller;
            self->capacity /= 2;
        }
    }
}

/* 1 when the transaction still has this timer armed at ``when``, 0 when not, -1 on error;
 * with ``disarm``, an armed timer is removed from the transaction's deadlines. */
static int entry_armed(const TimerEntry *e, int disarm) {
    PyObject *deadlines = PyObject_GetAttr(e->txn, s_deadlines);
    if (deadlines == NULL)
        return -1;
    if (!PyDict_Check(deadlines)) {
        PyErr_SetString(PyExc_TypeError, "transaction.deadlines must be a dict");
        Py_DECREF(deadlines);
        return -1;
    }
    int armed = 0;
    PyObject *v = PyDict_GetItemWithError(deadlines, e->timer);
    if (v != NULL) {
        Py_INCREF(v);
        if (PyFloat_CheckExact(v)) {
            armed = PyFloat_AS_DOUBLE(v) == e->when;
        } else {
            PyObject *when = PyFloat_FromDouble(e->when);
            armed = when == NULL ? -1 : PyObject_RichCompareBool(v, when, Py_EQ);
            Py_XDECREF(when);
        }
        Py_DECREF(v);
        if (armed == 1 && disarm && PyDict_DelItem(deadlines, e->timer) < 0)
            armed = -1;
    } else if (PyErr_Occurred()) {
        armed = -1;
    }
    Py_DECREF(deadlines);
    return armed;
}

static PyObject *TimerHeap_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "TimerHeap() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static int TimerHeap_traverse(TimerHeapObject *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Py_VISIT(self->entries[i].txn);
        Py_VISIT(self->entries[i].timer);
    }
    return 0;
}

static int TimerHeap_clear(TimerHeapObject *self) {
    TimerEntry *entries = self->entries;
    Py_ssize_t size = self->size;
    self->entries = NULL;
    self->size = self->capacity = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        Py_DECREF(entries[i].txn);
        Py_DECREF(entries[i].timer);
    }
    PyMem_Free(entries);
    return 0;
}

static void TimerHeap_dealloc(TimerHeapObject *self) {
    PyObject_GC_UnTrack(self);
    TimerHeap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t TimerHeap_len(TimerHeapObject *self) {
    return self->size;
}

static PyObject *TimerHeap_push(TimerHeapObject *self, PyObject *const *args,
                                Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(when, txn, timer)");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->size == self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 1024;
        if ((size_t)capacity > PY_SSIZE_T_MAX / sizeof(TimerEntry))
            return PyErr_NoMemory();
        TimerEntry *grown = PyMem_Realloc(self->entries, capacity * sizeof(TimerEntry));
        if (grown == NULL)
            return PyErr_NoMemory();
        self->entries = grown;
        self->capacity = capacity;
    }
    TimerEntry *e = &self->entries[self->size];
    e->when = when;
    e->seq = self->seq++;
    e->txn = args[1];
    e->timer = args[2];
    Py_INCREF(e->txn);
    Py_INCREF(e->timer);
    heap_sift_up(self->entries, self->size++);
    Py_RETURN_NONE;
}

static PyObject *TimerHeap_earliest(TimerHeapObject *self, PyObject *unused) {
    if (self->size == 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->entries[0].when);
}

static PyObject *TimerHeap_next_deadline(TimerHeapObject *self, PyObject *unused) {
    while (self->size > 0) {
        TimerEntry top = self->entries[0];
        Py_INCREF(top.txn);
        Py_INCREF(top.timer);
        int armed = entry_armed(&top, 0);
        Py_DECREF(top.txn);
        Py_DECREF(top.timer);
        if (armed < 0)
            return NULL;
        if (armed)
            return PyFloat_FromDouble(top.when);
        if (self->size > 0 && self->entries[0].seq == top.seq) {  /* stale: drop it */
            TimerEntry gone;
            heap_pop(self, &gone);
            Py_DECREF(gone.txn);
            Py_DECREF(gone.timer);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *TimerHeap_pop_due(TimerHeapObject *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *due = PyList_New(0);
    if (due == NULL)
        return NULL;
    while (self->size > 0 && self->entries[0].when <= now) {
        TimerEntry e;
        heap_pop(self, &e);
        int armed = entry_armed(&e, 1);
        if (armed == 1) {
            PyObject *pair = PyTuple_Pack(2, e.txn, e.timer);
            if (pair == NULL || PyList_Append(due, pair) < 0)
                armed = -1;
            Py_XDECREF(pair);
        }
        Py_DECREF(e.txn);
        Py_DECREF(e.timer);
        if (armed < 0) {
            Py_DECREF(due);
            return NULL;
        }
    }
    return due;
}

static PyMethodDef TimerHeap_methods[] = {
    {"push", (PyCFunction)(void (*)(void))TimerHeap_push, METH_FASTCALL,
     "push(when, txn, timer): arm an entry"},
    {"earliest", (PyCFunction)TimerHeap_earliest, METH_NOARGS,
     "The first entry's time, armed or not (never later than next_deadline)."},
    {"next_deadline", (PyCFunction)TimerHeap_next_deadline, METH_NOARGS,
     "The earliest armed entry's time (stale entries before it are dropped), or None."},
    {"pop_due", (PyCFunction)TimerHeap_pop_due, METH_O,
     "Remove and return the armed timers due at now, earliest first: [(txn, timer)]."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods TimerHeap_as_sequence = {
    .sq_length = (lenfunc)TimerHeap_len,
};

static PyTypeObject TimerHeapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.sip._cmessage.TimerHeap",
    .tp_doc = "Transaction timers in one C array (transaction/timers.py is the reference).",
    .tp_basicsize = sizeof(TimerHeapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = TimerHeap_new,
    .tp_dealloc = (destructor)TimerHeap_dealloc,
    .tp_traverse = (traverseproc)TimerHeap_traverse,
    .tp_clear = (inquiry)TimerHeap_clear,
    .tp_methods = TimerHeap_methods,
    .tp_as_sequence = &TimerHeap_as_sequence,
};

/* untracked(obj) -> obj: the object taken out of the cyclic garbage collector's lists.
 * For the objects a call keeps for seconds (its transactions' contexts, its ACK template, its
 * record's parts): tracked, tens of thousands of them were walked by every young collection
 * (~12 ms each at 2,500 calls/s) and again by every middle one. Only for an object that can
 * never be part of a reference cycle (what it refers to never refers back to it, or the
 * link back is cut when it ends, as a transaction's context is): reference counting alone
 * then frees it. */
static PyObject *untracked(PyObject *self, PyObject *obj) {
    if (PyObject_GC_IsTracked(obj)) /* (0 for a type the collector does not know) */
        PyObject_GC_UnTrack(obj);
    Py_INCREF(obj);
    return obj;
}

static PyMethodDef methods[] = {
    {"parse_fast", (PyCFunction)(void (*)(void))parse_fast, METH_FASTCALL, parse_fast_doc},
    {"via_fields", (PyCFunction)via_fields, METH_O, via_fields_doc},
    {"split_values", (PyCFunction)(void (*)(void))split_values, METH_FASTCALL,
     split_values_doc},
    {"assemble", (PyCFunction)(void (*)(void))assemble, METH_FASTCALL, assemble_doc},
    {"joined_lines", (PyCFunction)(void (*)(void))joined_lines, METH_FASTCALL,
     joined_lines_doc},
    {"untracked", (PyCFunction)untracked, METH_O,
     "untracked(obj) -> obj: out of the cyclic GC (only for what no cycle can include)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cmessage",
    "The compiled core of stirshaken_proxy.sip.message (the Python code is the reference).",
    -1, methods, NULL, NULL, NULL, NULL,
};

static int intern_names(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_is_request, "is_request") NAME(s_method, "method") NAME(s_uri, "uri")
    NAME(s_status, "status") NAME(s_reason, "reason") NAME(s_line_end, "line_end")
    NAME(s_head_end, "head_end") NAME(s_body_start, "body_start") NAME(s_body_end, "body_end")
    NAME(s_call_id, "call_id") NAME(s_cseq, "cseq") NAME(s_cseq_method, "cseq_method")
    NAME(s_headers, "headers") NAME(s_index, "index")
    NAME(n_via, "via") NAME(n_from, "from") NAME(n_to, "to") NAME(n_call_id, "call-id")
    NAME(n_cseq, "cseq") NAME(n_max_forwards, "max-forwards")
    NAME(n_content_length, "content-length") NAME(n_contact, "contact")
    NAME(s_deadlines, "deadlines")
    NAME(v_text, "text") NAME(v_transport, "transport") NAME(v_host, "host")
    NAME(v_port, "port") NAME(v_params, "params") NAME(v_branch, "branch")
    NAME(v_rfc3261_branch, "rfc3261_branch") NAME(v_top_via, "_top_via") NAME(v_comma, ",")
    NAME(v_empty, "")
#undef NAME
    return 0;
}

PyMODINIT_FUNC PyInit__cmessage(void) {
    if (PyType_Ready(&HeaderType) < 0 || PyType_Ready(&TimerHeapType) < 0 ||
        intern_names() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HeaderType);
    if (PyModule_AddObject(m, "Header", (PyObject *)&HeaderType) < 0) {
        Py_DECREF(&HeaderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TimerHeapType);
    if (PyModule_AddObject(m, "TimerHeap", (PyObject *)&TimerHeapType) < 0) {
        Py_DECREF(&TimerHeapType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
