/* The compiled core's datagram path: what io/transports.UdpEndpoint.datagram_received and
 * io/shell.EngineShell.process and execute do for each datagram, without a Python frame of
 * ours. Those Python methods are the reference; the shell uses these types while the compiled
 * core is in use, and tests/io runs on both cores.
 *
 * Endpoint is the UDP protocol (uvloop calls its datagram_received): the datagram's source
 * address becomes a Peer (made once per address) and goes to the sink, the Pump's process
 * with one worker. Pump.process hands the datagram to the engine, sends the UDP datagrams
 * among its actions on the endpoints' transports, passes every other action to the shell's
 * carry_out, and calls the shell's arm when the engine's earliest deadline comes before the
 * armed wake-up covers. An engine that raises is reported to the shell's failed, with the
 * exception: the datagram is lost, the service goes on. Nothing here parses or decides. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

static PyObject *s_is_closing, *s_sendto, *s_transport;

/* Each of `n` fields set to its new value (references taken; the old ones let go). */
static void set_fields(PyObject **const slots[], PyObject *const values[], int n) {
    for (int i = 0; i < n; i++) {
        Py_INCREF(values[i]);
        Py_XSETREF(*slots[i], values[i]);
    }
}

typedef struct {
    PyObject_HEAD
    PyObject *side;
    PyObject *sink;      /* sink(data, peer) */
    PyObject *counters;  /* collections.Counter of I/O events */
    PyObject *peer_type; /* sip.transport.Peer */
    PyObject *udp;       /* Transport.UDP */
    PyObject *peers;     /* dict: source address -> Peer */
    PyObject *transport; /* set by connection_made */
    Py_ssize_t peers_limit;
} Endpoint;

static PyTypeObject EndpointType;

/* -- Pump ---------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *receive;    /* engine.receive(data, peer, now) -> list of actions */
    PyObject *earliest;   /* engine.earliest_deadline() -> float or None */
    PyObject *send_type;  /* sip.transport.Send */
    PyObject *udp;        /* Transport.UDP */
    PyObject *endpoints;  /* dict: side -> endpoint (its .transport sends) */
    PyObject *carry_out;  /* shell.carry_out(action): every action but a UDP Send */
    PyObject *arm;        /* shell._arm(deadline) */
    PyObject *failed;     /* shell.failed(exc, peer) */
    PyObject *at;         /* the armed wake-up (a float), or None */
    double cover;         /* a deadline above this rounds up to `at` or later */
} Pump;

static int Pump_traverse(Pump *self, visitproc visit, void *arg) {
    Py_VISIT(self->receive);
    Py_VISIT(self->earliest);
    Py_VISIT(self->send_type);
    Py_VISIT(self->udp);
    Py_VISIT(self->endpoints);
    Py_VISIT(self->carry_out);
    Py_VISIT(self->arm);
    Py_VISIT(self->failed);
    Py_VISIT(self->at);
    return 0;
}

static int Pump_clear(Pump *self) {
    Py_CLEAR(self->receive);
    Py_CLEAR(self->earliest);
    Py_CLEAR(self->send_type);
    Py_CLEAR(self->udp);
    Py_CLEAR(self->endpoints);
    Py_CLEAR(self->carry_out);
    Py_CLEAR(self->arm);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->at);
    return 0;
}

static void Pump_dealloc(Pump *self) {
    PyObject_GC_UnTrack(self);
    Pump_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"receive", "earliest", "send_type", "udp", "endpoints",
                             "carry_out", "arm", "failed", NULL};
    PyObject *receive, *earliest, *send_type, *udp, *endpoints, *carry_out, *arm, *failed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO!OOO", kwlist, &receive, &earliest,
                                     &send_type, &udp, &PyDict_Type, &endpoints, &carry_out,
                                     &arm, &failed))
        return -1;
    if (!PyType_Check(send_type) || !PyType_IsSubtype((PyTypeObject *)send_type,
                                                      &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "send_type: a tuple type (Send)");
        return -1;
    }
    PyObject *values[9] = {receive, earliest, send_type, udp, endpoints, carry_out, arm,
                           failed, Py_None};
    PyObject **const slots[9] = {&self->receive, &self->earliest, &self->send_type, &self->udp,
                                 &self->endpoints, &self->carry_out, &self->arm,
                                 &self->failed, &self->at};
    set_fields(slots, values, 9);
    self->cover = 0.0;
    return 0;
}

/* Sends one UDP datagram as the reference does: on the endpoint of the peer's side, unless it
 * has no transport or it is closing. 0, or -1 with an exception set. */
static int send_udp(Pump *self, PyObject *data, PyObject *peer) {
    PyObject *side = PyTuple_GET_ITEM(peer, 0);
    PyObject *endpoint = PyDict_GetItemWithError(self->endpoints, side);
    if (endpoint == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, side);
        return -1;
    }
    PyObject *transport;
    if (PyObject_TypeCheck(endpoint, &EndpointType)) {
        transport = ((Endpoint *)endpoint)->transport;
        Py_INCREF(transport);
    } else if ((transport = PyObject_GetAttr(endpoint, s_transport)) == NULL) {
        return -1;
    }
    int rc = 0;
    if (transport != Py_None) {
        PyObject *closing = PyObject_CallMethodNoArgs(transport, s_is_closing);
        int is_closing = closing == NULL ? -1 : PyObject_IsTrue(closing);
        Py_XDECREF(closing);
        if (is_closing < 0) {
            rc = -1;
        } else if (!is_closing) {
            PyObject *addr = PyTuple_Pack(2, PyTuple_GET_ITEM(peer, 2), PyTuple_GET_ITEM(peer, 3));
            if (addr == NULL) {
                rc = -1;
            } else {
                PyObject *argv[3] = {transport, data, addr};
                PyObject *r = PyObject_VectorcallMethod(
                    s_sendto, argv, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                rc = r == NULL ? -1 : 0;
                Py_XDECREF(r);
                Py_DECREF(addr);
            }
        }
    }
    Py_DECREF(transport);
    return rc;
}

static PyObject *Pump_execute(Pump *self, PyObject *actions) {
    if (!PyList_Check(actions)) {
        PyErr_SetString(PyExc_TypeError, "execute(actions: list)");
        return NULL;
    }
    /* The list may grow while its actions run (a carry_out that calls back): index it. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(actions); i++) {
        PyObject *action = PyList_GET_ITEM(actions, i);
        Py_INCREF(action);
        int rc;
        if (Py_TYPE(action) == (PyTypeObject *)self->send_type &&
            PyTuple_GET_SIZE(action) == 2 && PyTuple_Check(PyTuple_GET_ITEM(action, 1)) &&
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(action, 1)) >= 4 &&
            PyTuple_GET_ITEM(PyTuple_GET_ITEM(action, 1), 1) == self->udp) {
            rc = send_udp(self, PyTuple_GET_ITEM(action, 0), PyTuple_GET_ITEM(action, 1));
        } else {
            PyObject *r = PyObject_CallOneArg(self->carry_out, action);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
        }
        Py_DECREF(action);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Pump_process(Pump *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "process(data, peer)");
        return NULL;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic(): the timers' clock (io.shell) */
    PyObject *now = PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    if (now == NULL)
        return NULL;
    PyObject *argv[3] = {args[0], args[1], now};
    PyObject *actions = PyObject_Vectorcall(self->receive, argv, 3, NULL);
    Py_DECREF(now);
    if (actions == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL; /* KeyboardInterrupt, SystemExit: not ours to keep */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
        PyObject *fargv[2] = {value != NULL ? value : Py_None, args[1]};
        PyObject *r = PyObject_Vectorcall(self->failed, fargv, 2, NULL);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    PyObject *done = Pump_execute(self, actions);
    Py_DECREF(actions);
    if (done == NULL)
        return NULL;
    Py_DECREF(done);
    /* arm_timer's first test: after most messages the armed wake-up covers the deadline. */
    PyObject *deadline = PyObject_CallNoArgs(self->earliest);
    if (deadline == NULL)
        return NULL;
    if (deadline != Py_None) {
        double d = PyFloat_AsDouble(deadline);
        if (d == -1.0 && PyErr_Occurred()) {
            Py_DECREF(deadline);
            return NULL;
        }
        if (self->at == Py_None || d <= self->cover) {
            PyObject *r = PyObject_CallOneArg(self->arm, deadline);
            if (r == NULL) {
                Py_DECREF(deadline);
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    Py_DECREF(deadline);
    Py_RETURN_NONE;
}

static int Pump_set_at(Pump *self, PyObject *value, void *closure) {
    if (value == NULL || (value != Py_None && !PyFloat_Check(value) && !PyLong_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "at: a float or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->at, value);
    return 0;
}

static PyObject *Pump_get_at(Pump *self, void *closure) {
    Py_INCREF(self->at);
    return self->at;
}

static PyMethodDef Pump_methods[] = {
    {"process", (PyCFunction)(void (*)(void))Pump_process, METH_FASTCALL,
     "process(data, peer): a datagram through the engine, its actions carried out."},
    {"execute", (PyCFunction)Pump_execute, METH_O,
     "execute(actions): UDP datagrams sent, every other action to carry_out."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pump_members[] = {
    {"cover", T_DOUBLE, offsetof(Pump, cover), 0,
     "a deadline above this rounds up to `at` or later"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Pump_getset[] = {
    {"at", (getter)Pump_get_at, (setter)Pump_set_at, "the armed wake-up, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.io._cpump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Pump(receive, earliest, send_type, udp, endpoints, carry_out, arm, failed): "
              "EngineShell.process and execute, compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_methods = Pump_methods,
    .tp_members = Pump_members,
    .tp_getset = Pump_getset,
};

/* -- Endpoint ------------------------------------------------------------------------------ */


static int Endpoint_traverse(Endpoint *self, visitproc visit, void *arg) {
    Py_VISIT(self->side);
    Py_VISIT(self->sink);
    Py_VISIT(self->counters);
    Py_VISIT(self->peer_type);
    Py_VISIT(self->udp);
    Py_VISIT(self->peers);
    Py_VISIT(self->transport);
    return 0;
}

static int Endpoint_clear(Endpoint *self) {
    Py_CLEAR(self->side);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->peer_type);
    Py_CLEAR(self->udp);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->transport);
    return 0;
}

static void Endpoint_dealloc(Endpoint *self) {
    PyObject_GC_UnTrack(self);
    Endpoint_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Endpoint_init(Endpoint *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"side", "sink", "counters", "peer_type", "udp", "peers_limit",
                             NULL};
    PyObject *side, *sink, *counters, *peer_type, *udp;
    Py_ssize_t limit = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|n", kwlist, &side, &sink, &counters,
                                     &peer_type, &udp, &limit))
        return -1;
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "peers_limit must be positive");
        return -1;
    }
    PyObject *peers = PyDict_New();
    if (peers == NULL)
        return -1;
    PyObject *values[6] = {side, sink, counters, peer_type, udp, Py_None};
    PyObject **const slots[6] = {&self->side, &self->sink, &self->counters, &self->peer_type,
                                 &self->udp, &self->transport};
    set_fields(slots, values, 6);
    Py_XSETREF(self->peers, peers);
    self->peers_limit = limit;
    return 0;
}

/* The Peer of a source address: made once per address (a NamedTuple is costly to make), the
 * table emptied when it reaches its limit. A new reference, or NULL. */
static PyObject *peer_of(Endpoint *self, PyObject *addr) {
    PyObject *peer = PyDict_GetItemWithError(self->peers, addr);
    if (peer != NULL) {
        Py_INCREF(peer);
        return peer;
    }
    if (PyErr_Occurred())
        return NULL;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "a source address is a (host, port, ...) tuple");
        return NULL;
    }
    if (PyDict_GET_SIZE(self->peers) >= self->peers_limit)
        PyDict_Clear(self->peers);
    PyObject *argv[4] = {self->side, self->udp, PyTuple_GET_ITEM(addr, 0),
                         PyTuple_GET_ITEM(addr, 1)};
    peer = PyObject_Vectorcall(self->peer_type, argv, 4, NULL);
    if (peer == NULL)
        return NULL;
    if (PyDict_SetItem(self->peers, addr, peer) < 0) {
        Py_DECREF(peer);
        return NULL;
    }
    return peer;
}

static PyObject *Endpoint_datagram_received(Endpoint *self, PyObject *const *args,
                                            Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "datagram_received(data, addr)");
        return NULL;
    }
    PyObject *peer = peer_of(self, args[1]);
    if (peer == NULL)
        return NULL;
    PyObject *argv[2] = {args[0], peer};
    PyObject *r = PyObject_Vectorcall(self->sink, argv, 2, NULL);
    Py_DECREF(peer);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *Endpoint_connection_made(Endpoint *self, PyObject *transport) {
    Py_INCREF(transport);
    Py_XSETREF(self->transport, transport);
    Py_RETURN_NONE;
}

static PyObject *Endpoint_error_received(Endpoint *self, PyObject *exc) {
    /* ICMP unreachable and the like: UDP is best effort, retransmission timers cover it. */
    PyObject *key = PyUnicode_FromString("udp_errors");
    if (key == NULL)
        return NULL;
    PyObject *count = PyObject_GetItem(self->counters, key);
    PyObject *one = PyLong_FromLong(1);
    PyObject *more = count != NULL && one != NULL ? PyNumber_Add(count, one) : NULL;
    Py_XDECREF(one);
    int rc = more != NULL ? PyObject_SetItem(self->counters, key, more) : -1;
    Py_XDECREF(count);
    Py_XDECREF(more);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Endpoint_connection_lost(Endpoint *self, PyObject *exc) {
    Py_RETURN_NONE;
}

static PyMethodDef Endpoint_methods[] = {
    {"datagram_received", (PyCFunction)(void (*)(void))Endpoint_datagram_received,
     METH_FASTCALL, "datagram_received(data, addr): to the sink with the source's Peer."},
    {"connection_made", (PyCFunction)Endpoint_connection_made, METH_O, NULL},
    {"error_received", (PyCFunction)Endpoint_error_received, METH_O,
     "counted as udp_errors"},
    {"connection_lost", (PyCFunction)Endpoint_connection_lost, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Endpoint_members[] = {
    {"side", T_OBJECT, offsetof(Endpoint, side), READONLY, NULL},
    {"sink", T_OBJECT, offsetof(Endpoint, sink), READONLY, NULL},
    {"counters", T_OBJECT, offsetof(Endpoint, counters), READONLY, NULL},
    {"transport", T_OBJECT, offsetof(Endpoint, transport), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject EndpointType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.io._cpump.Endpoint",
    .tp_basicsize = sizeof(Endpoint),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Endpoint(side, sink, counters, peer_type, udp, peers_limit=4096): "
              "transports.UdpEndpoint, compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Endpoint_init,
    .tp_dealloc = (destructor)Endpoint_dealloc,
    .tp_traverse = (traverseproc)Endpoint_traverse,
    .tp_clear = (inquiry)Endpoint_clear,
    .tp_methods = Endpoint_methods,
    .tp_members = Endpoint_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpump", "The compiled core's datagram path.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpump(void) {
    if ((s_is_closing = PyUnicode_InternFromString("is_closing")) == NULL ||
        (s_sendto = PyUnicode_InternFromString("sendto")) == NULL ||
        (s_transport = PyUnicode_InternFromString("transport")) == NULL)
        return NULL;
    if (PyType_Ready(&PumpType) < 0 || PyType_Ready(&EndpointType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EndpointType);
    if (PyModule_AddObject(m, "Endpoint", (PyObject *)&EndpointType) < 0) {
        Py_DECREF(&EndpointType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
