/* The compiled core's transactions: RFC 3261 §17 client and server transactions (with
 * RFC 6026's Accepted state) as C types. transaction/machine.py is the reference.
 *
 * The transition tables are not written here: bind() reads the Python classes' TABLE (state,
 * event) -> (next state, steps) and maps each step, by its name, to the C function below
 * that does what the Python one does. A step the Python table names and C lacks fails bind,
 * so the two cannot drift apart silently; tests/transaction runs on both cores, and
 * tests/transaction/test_machine_cores.py drives both with the same random events.
 *
 * Why C: a message moves two transactions (its own and its pair's), each through a table
 * lookup, two to four steps and a timer or two: about a third of the Python calls a signed
 * call makes. Here that is a few C calls; the proxy engine's callbacks (on_response,
 * on_timeout, on_terminated, on_timer_c) stay Python. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* The order of transaction/machine.py's State and Event (checked by bind). */
enum { CALLING, TRYING, PROCEEDING, COMPLETED, CONFIRMED, ACCEPTED, TERMINATED, N_STATES };
static const char *const STATE_NAMES[N_STATES] = {
    "CALLING", "TRYING", "PROCEEDING", "COMPLETED", "CONFIRMED", "ACCEPTED", "TERMINATED"};
enum {
    PROVISIONAL, SUCCESS, FAILURE, REQUEST, ACK, SEND_PROVISIONAL, SEND_SUCCESS, SEND_FAILURE,
    TRANSPORT_ERROR, TIMER_A, TIMER_B, TIMER_D, TIMER_E, TIMER_F, TIMER_G, TIMER_H, TIMER_I,
    TIMER_J, TIMER_K, TIMER_L, TIMER_M, TIMER_C, N_EVENTS
};
static const char *const EVENT_NAMES[N_EVENTS] = {
    "PROVISIONAL", "SUCCESS", "FAILURE", "REQUEST", "ACK", "SEND_PROVISIONAL", "SEND_SUCCESS",
    "SEND_FAILURE", "TRANSPORT_ERROR", "TIMER_A", "TIMER_B", "TIMER_D", "TIMER_E", "TIMER_F",
    "TIMER_G", "TIMER_H", "TIMER_I", "TIMER_J", "TIMER_K", "TIMER_L", "TIMER_M", "TIMER_C"};

enum { CLIENT_INVITE, CLIENT_NON_INVITE, SERVER_INVITE, SERVER_NON_INVITE, N_KINDS };

/* The steps, by the name of the Python function each mirrors. */
enum {
    RETRANSMIT, ARM_TIMER_A, REPORT_TIMEOUT, STOP_CALLING_TIMERS, RESET_TIMER_C, PASS_UP,
    ARM_TIMER_M, SEND_ACK, ARM_TIMER_D, REPORT_TIMER_C, ARM_TIMER_E, ARM_TIMER_E_T2,
    ARM_TIMER_K, RESEND_LAST, SEND, ARM_TIMER_G, ARM_TIMER_H, ARM_TIMER_I, ARM_TIMER_L,
    ARM_TIMER_J, N_STEP_KINDS
};
static const char *const STEP_NAMES[N_STEP_KINDS] = {
    "retransmit", "arm_timer_a", "report_timeout", "stop_calling_timers", "reset_timer_c",
    "pass_up", "arm_timer_m", "send_ack", "arm_timer_d", "report_timer_c", "arm_timer_e",
    "arm_timer_e_t2", "arm_timer_k", "resend_last", "send", "arm_timer_g", "arm_timer_h",
    "arm_timer_i", "arm_timer_l", "arm_timer_j"};

#define MAX_STEPS 4
typedef struct {
    signed char next; /* -1: the state ignores the event */
    unsigned char n;
    unsigned char steps[MAX_STEPS];
} Entry;

static Entry table[N_KINDS][N_STATES][N_EVENTS];
static int initial[N_KINDS];
static int bound;

/* What bind() hands over: the enums' members, the event values used as timer names, Send,
 * Transport.UDP and the empty ACK template of a finished INVITE client transaction. */
static PyObject *states[N_STATES], *events[N_EVENTS], *timer_names[N_EVENTS];
static PyTypeObject *send_type;
static PyObject *udp, *no_ack, *empty_bytes;
static PyObject *s_timers, *s_push, *s_on_response, *s_on_timeout, *s_on_terminated,
    *s_on_timer_c, *s_status, *s_index, *s_to, *s_header_line, *s_transport, *s_t1, *s_t2,
    *s_t4, *s_timer_d, *s_timer_c;

typedef struct {
    PyObject_HEAD
    int kind;
    int state;
    int udp; /* the peer's transport is UDP (a Peer is immutable) */
    double interval, timer_c_at;
    double t1, t2, t4, timer_d, timer_c; /* the TimerConfig's (frozen) */
    PyObject *key, *peer, *tu, *config, *deadlines, *context;
    PyObject *request;       /* client: the bytes sent; server: the message, or None */
    PyObject *ack;           /* client INVITE: the ACK of a non-2xx, once made */
    PyObject *ack_template;  /* client INVITE */
    PyObject *last_response; /* server */
} Txn;

static PyTypeObject TransactionType, ClientTransactionType, ServerTransactionType,
    ClientInviteType, ClientNonInviteType, ServerInviteType, ServerNonInviteType;

static inline int is_client(const Txn *t) { return t->kind <= CLIENT_NON_INVITE; }

static inline void set_field(PyObject **slot, PyObject *value) {
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
}

/* -- helpers shared by the steps -------------------------------------------------------- */

static int append_send(Txn *self, PyObject *out, PyObject *data) {
    /* Send(data, peer), made as tuple.__new__ would make it (no Python frame). */
    PyObject *send = send_type->tp_alloc(send_type, 2);
    if (send == NULL)
        return -1;
    Py_INCREF(data);
    PyTuple_SET_ITEM(send, 0, data);
    Py_INCREF(self->peer);
    PyTuple_SET_ITEM(send, 1, self->peer);
    int rc;
    if (PyList_CheckExact(out)) {
        rc = PyList_Append(out, send);
    } else {
        PyObject *r = PyObject_CallMethod(out, "append", "O", send);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_DECREF(send);
    return rc;
}

static int arm_at(Txn *self, int timer, double when) {
    PyObject *w = PyFloat_FromDouble(when);
    if (w == NULL)
        return -1;
    PyObject *name = timer_names[timer];
    if (PyDict_SetItem(self->deadlines, name, w) < 0) {
        Py_DECREF(w);
        return -1;
    }
    PyObject *timers = PyObject_GetAttr(self->tu, s_timers);
    if (timers == NULL) {
        Py_DECREF(w);
        return -1;
    }
    PyObject *args[4] = {timers, w, (PyObject *)self, name};
    PyObject *r = PyObject_VectorcallMethod(s_push, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    Py_DECREF(timers);
    Py_DECREF(w);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static inline int arm(Txn *self, int timer, double delay, double now) {
    return arm_at(self, timer, now + delay);
}

static int disarm(Txn *self, int timer) {
    PyObject *name = timer_names[timer];
    PyObject *have = PyDict_GetItemWithError(self->deadlines, name);
    if (have == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_DelItem(self->deadlines, name);
}

static int tu_call(Txn *self, PyObject *method, size_t n, PyObject *a, PyObject *b,
                   PyObject *c) {
    /* self.tu.<method>(self, a, b, c), cut to n arguments (self is the first). */
    PyObject *args[5] = {self->tu, (PyObject *)self, a, b, c};
    n += 1;
    PyObject *r = PyObject_VectorcallMethod(method, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int status_of(PyObject *msg, long *status) {
    PyObject *s = PyObject_GetAttr(msg, s_status);
    if (s == NULL)
        return -1;
    *status = PyLong_AsLong(s);
    Py_DECREF(s);
    return (*status == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int arm_step(Txn *self, double now) {
    /* At the deadline itself, not now + remainder: the last step fires at timer_c_at. */
    double step = now + 64 * self->t1;
    return arm_at(self, TIMER_C, step < self->timer_c_at ? step : self->timer_c_at);
}

static int arm_timer_c(Txn *self, double delay, double now) {
    double when = self->timer_c_at = now + delay;
    PyObject *step = PyDict_GetItemWithError(self->deadlines, timer_names[TIMER_C]);
    if (step == NULL && PyErr_Occurred())
        return -1;
    if (step != NULL) {
        double armed = PyFloat_AsDouble(step);
        if (armed == -1.0 && PyErr_Occurred())
            return -1;
        if (!(armed > when))
            return 0; /* the armed step comes first and moves on */
    }
    return arm_step(self, now);
}

/* The ACK of a non-2xx answer (§17.1.1.3): the template's lines, the response's To line (with
 * the tag the answer gave), its own CSeq line. */
static PyObject *make_ack(PyObject *t, PyObject *msg) {
    PyObject *head = PyTuple_GET_ITEM(t, 0), *from_call_id = PyTuple_GET_ITEM(t, 1);
    long long cseq = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2));
    if (cseq == -1 && PyErr_Occurred())
        return NULL;
    PyObject *index = PyObject_GetAttr(msg, s_index);
    if (index == NULL)
        return NULL;
    PyObject *to = PyObject_GetItem(index, s_to);
    Py_DECREF(index);
    if (to == NULL)
        return NULL;
    PyObject *first = PySequence_GetItem(to, 0);
    Py_DECREF(to);
    if (first == NULL)
        return NULL;
    PyObject *args[2] = {msg, first};
    PyObject *line = PyObject_VectorcallMethod(
        s_header_line, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(first);
    if (line == NULL)
        return NULL;
    if (!PyBytes_Check(head) || !PyBytes_Check(from_call_id) || !PyBytes_Check(line)) {
        Py_DECREF(line);
        PyErr_SetString(PyExc_TypeError, "ACK pieces must be bytes");
        return NULL;
    }
    char tail[96];
    int tail_len = snprintf(tail, sizeof tail,
                            "CSeq: %lld ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                            cseq);
    Py_ssize_t a = PyBytes_GET_SIZE(head), b = PyBytes_GET_SIZE(from_call_id),
               c = PyBytes_GET_SIZE(line);
    PyObject *ack = PyBytes_FromStringAndSize(NULL, a + b + c + tail_len);
    if (ack == NULL) {
        Py_DECREF(line);
        return NULL;
    }
    char *p = PyBytes_AS_STRING(ack);
    memcpy(p, PyBytes_AS_STRING(head), a);
    memcpy(p + a, PyBytes_AS_STRING(from_call_id), b);
    memcpy(p + a + b, PyBytes_AS_STRING(line), c);
    memcpy(p + a + b + c, tail, tail_len);
    Py_DECREF(line);
    return ack;
}

static int send_ack(Txn *self, PyObject *out, PyObject *msg) {
    if (self->ack == Py_None) {
        /* Held: the attribute lookups below could run code that releases the template. */
        PyObject *t = self->ack_template;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "ack_template: an AckTemplate");
            return -1;
        }
        Py_INCREF(t);
        PyObject *ack = make_ack(t, msg);
        Py_DECREF(t);
        if (ack == NULL)
            return -1;
        Py_SETREF(self->ack, ack);
    }
    PyObject *ack = self->ack;
    Py_INCREF(ack);
    int rc = append_send(self, out, ack);
    Py_DECREF(ack);
    return rc;
}

/* The step `step` of the table, as the Python function of its name does it. */
static int run_step(Txn *self, int step, PyObject *now_obj, double now, PyObject *out,
                    PyObject *payload) {
    switch (step) {
    case RETRANSMIT:
        return append_send(self, out, self->request);
    case ARM_TIMER_A:
        self->interval *= 2;
        return arm(self, TIMER_A, self->interval, now);
    case REPORT_TIMEOUT:
        return tu_call(self, s_on_timeout, 3, now_obj, out, NULL);
    case STOP_CALLING_TIMERS:
        return disarm(self, TIMER_A) < 0 || disarm(self, TIMER_B) < 0 ? -1 : 0;
    case RESET_TIMER_C: {
        /* §16.7 step 2: only provisional responses 101-199 reset Timer C. */
        long status;
        if (status_of(payload, &status) < 0)
            return -1;
        return status > 100 ? arm_timer_c(self, self->timer_c, now) : 0;
    }
    case PASS_UP:
        return tu_call(self, s_on_response, 4, payload, now_obj, out);
    case ARM_TIMER_M:
        if (disarm(self, TIMER_A) < 0 || disarm(self, TIMER_B) < 0 ||
            disarm(self, TIMER_C) < 0)
            return -1;
        return arm(self, TIMER_M, 64 * self->t1, now);
    case SEND_ACK:
        return send_ack(self, out, payload);
    case ARM_TIMER_D:
        if (disarm(self, TIMER_A) < 0 || disarm(self, TIMER_B) < 0 ||
            disarm(self, TIMER_C) < 0)
            return -1;
        return arm(self, TIMER_D, self->udp ? self->timer_d : 0.0, now);
    case REPORT_TIMER_C:
        return tu_call(self, s_on_timer_c, 3, now_obj, out, NULL);
    case ARM_TIMER_E: {
        double twice = 2 * self->interval;
        self->interval = self->t2 < twice ? self->t2 : twice;
        return arm(self, TIMER_E, self->interval, now);
    }
    case ARM_TIMER_E_T2:
        return arm(self, TIMER_E, self->t2, now);
    case ARM_TIMER_K:
        if (disarm(self, TIMER_E) < 0 || disarm(self, TIMER_F) < 0)
            return -1;
        return arm(self, TIMER_K, self->udp ? self->t4 : 0.0, now);
    case RESEND_LAST:
        return self->last_response != Py_None ? append_send(self, out, self->last_response) : 0;
    case SEND:
        set_field(&self->last_response, payload);
        return append_send(self, out, payload);
    case ARM_TIMER_G: {
        if (!self->udp)
            return 0;
        if (arm(self, TIMER_G, self->interval, now) < 0)
            return -1;
        double twice = 2 * self->interval;
        self->interval = self->t2 < twice ? self->t2 : twice;
        return 0;
    }
    case ARM_TIMER_H:
        return arm(self, TIMER_H, 64 * self->t1, now);
    case ARM_TIMER_I:
        if (disarm(self, TIMER_G) < 0 || disarm(self, TIMER_H) < 0)
            return -1;
        return arm(self, TIMER_I, self->udp ? self->t4 : 0.0, now);
    case ARM_TIMER_L:
        return arm(self, TIMER_L, 64 * self->t1, now);
    case ARM_TIMER_J:
        return arm(self, TIMER_J, self->udp ? 64 * self->t1 : 0.0, now);
    }
    PyErr_Format(PyExc_SystemError, "unknown transaction step %d", step);
    return -1;
}

/* -- the machine ------------------------------------------------------------------------ */

/* What a finished transaction no longer needs (machine.py's _release). */
static void release(Txn *self) {
    set_field(&self->context, Py_None);
    if (is_client(self)) {
        set_field(&self->request, empty_bytes);
        if (self->kind == CLIENT_INVITE) {
            set_field(&self->ack_template, no_ack);
            set_field(&self->ack, Py_None);
        }
    } else {
        set_field(&self->request, Py_None);
        set_field(&self->last_response, Py_None);
    }
}

static int finish(Txn *self) {
    PyDict_Clear(self->deadlines);
    if (tu_call(self, s_on_terminated, 1, NULL, NULL, NULL) < 0)
        return -1; /* (as in machine.py: an error there leaves the release undone) */
    release(self);
    return 0;
}

/* 1: applied, 0: the state ignores the event, -1: an error (raised). */
static int fire(Txn *self, int event, PyObject *now_obj, double now, PyObject *out,
                PyObject *payload) {
    const Entry *entry = &table[self->kind][self->state][event];
    if (entry->next < 0)
        return 0;
    self->state = entry->next;
    for (int i = 0; i < entry->n; i++) {
        if (run_step(self, entry->steps[i], now_obj, now, out, payload) < 0)
            return -1;
    }
    if (self->state == TERMINATED && finish(self) < 0)
        return -1;
    return 1;
}

static int event_of(PyObject *event) {
    for (int i = 0; i < N_EVENTS; i++) {
        if (events[i] == event)
            return i;
    }
    return -1;
}

static int timer_of(PyObject *name) {
    for (int i = TIMER_A; i < N_EVENTS; i++) {
        if (timer_names[i] == name)
            return i;
    }
    if (PyUnicode_Check(name)) {
        for (int i = TIMER_A; i < N_EVENTS; i++) {
            if (PyUnicode_Compare(timer_names[i], name) == 0)
                return i;
        }
    }
    PyErr_SetObject(PyExc_KeyError, name);
    return -1;
}

static int as_now(PyObject *obj, double *now) {
    *now = PyFloat_AsDouble(obj);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *fired(int rc) {
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

/* -- methods ---------------------------------------------------------------------------- */

static int check_args(const char *name, Py_ssize_t nargs, Py_ssize_t least, Py_ssize_t most) {
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "transaction tables not bound (machines())");
        return -1;
    }
    if (nargs < least || nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name,
                     least, most, nargs);
        return -1;
    }
    return 0;
}

static PyObject *Txn_fire(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* fire(event, now, out, payload=None) -> bool */
    double now;
    if (check_args("fire", nargs, 3, 4) < 0 || as_now(args[1], &now) < 0)
        return NULL;
    int event = event_of(args[0]);
    if (event < 0)
        Py_RETURN_FALSE;
    return fired(fire(self, event, args[1], now, args[2], nargs == 4 ? args[3] : Py_None));
}

static PyObject *Txn_timer_fired(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* timer_fired(timer, now, out) */
    double now;
    if (check_args("timer_fired", nargs, 3, 3) < 0 || as_now(args[1], &now) < 0)
        return NULL;
    int event = timer_of(args[0]);
    if (event < 0)
        return NULL;
    if (self->kind == CLIENT_INVITE && event == TIMER_C && now < self->timer_c_at) {
        if (arm_step(self, now) < 0) /* a step on the way to Timer C's deadline */
            return NULL;
        Py_RETURN_NONE;
    }
    if (fire(self, event, args[1], now, args[2], Py_None) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Txn_terminate(Txn *self, PyObject *unused) {
    if (self->state != TERMINATED) {
        self->state = TERMINATED;
        if (finish(self) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Txn_receive_response(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* receive_response(msg, now, out) */
    double now;
    long status;
    if (check_args("receive_response", nargs, 3, 3) < 0 || as_now(args[1], &now) < 0 ||
        status_of(args[0], &status) < 0)
        return NULL;
    int event = status < 200 ? PROVISIONAL : status < 300 ? SUCCESS : FAILURE;
    if (fire(self, event, args[1], now, args[2], args[0]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Txn_start(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* start(now, out): the request's first send and its timers. */
    double now;
    if (check_args("start", nargs, 2, 2) < 0 || as_now(args[0], &now) < 0)
        return NULL;
    if (append_send(self, args[1], self->request) < 0)
        return NULL;
    int invite = self->kind == CLIENT_INVITE;
    if (self->udp) {
        self->interval = self->t1;
        if (arm(self, invite ? TIMER_A : TIMER_E, self->interval, now) < 0)
            return NULL;
    }
    if (arm(self, invite ? TIMER_B : TIMER_F, 64 * self->t1, now) < 0)
        return NULL;
    if (invite && arm_timer_c(self, self->timer_c, now) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Txn_arm_timer_c(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* arm_timer_c(delay, now) */
    double delay, now;
    if (check_args("arm_timer_c", nargs, 2, 2) < 0 || as_now(args[0], &delay) < 0 ||
        as_now(args[1], &now) < 0)
        return NULL;
    if (arm_timer_c(self, delay, now) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Txn_receive_request(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* receive_request(now, out): a retransmission of the request */
    double now;
    if (check_args("receive_request", nargs, 2, 2) < 0 || as_now(args[0], &now) < 0)
        return NULL;
    if (fire(self, REQUEST, args[0], now, args[1], Py_None) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Txn_send_response(Txn *self, PyObject *const *args, Py_ssize_t nargs) {
    /* send_response(data, status, now, out) -> bool */
    double now;
    if (check_args("send_response", nargs, 4, 4) < 0 || as_now(args[2], &now) < 0)
        return NULL;
    long status = PyLong_AsLong(args[1]);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    int event = status < 200 ? SEND_PROVISIONAL : status < 300 ? SEND_SUCCESS : SEND_FAILURE;
    int rc = fire(self, event, args[2], now, args[3], args[0]);
    if (rc < 0)
        return NULL;
    if (status >= 200)
        set_field(&self->request, Py_None);
    return PyBool_FromLong(rc);
}

static PyObject *Txn_get_state(Txn *self, void *unused) {
    PyObject *state = states[self->state];
    if (state == NULL)
        Py_RETURN_NONE;
    Py_INCREF(state);
    return state;
}

static PyObject *Txn_get_interval(Txn *self, void *unused) {
    return PyFloat_FromDouble(self->interval);
}

/* -- construction and the collector ------------------------------------------------------ */

static int kind_of(PyTypeObject *type) {
    if (PyType_IsSubtype(type, &ClientInviteType))
        return CLIENT_INVITE;
    if (PyType_IsSubtype(type, &ClientNonInviteType))
        return CLIENT_NON_INVITE;
    if (PyType_IsSubtype(type, &ServerInviteType))
        return SERVER_INVITE;
    if (PyType_IsSubtype(type, &ServerNonInviteType))
        return SERVER_NON_INVITE;
    return -1;
}

static PyObject *Txn_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    int kind = kind_of(type);
    if (kind < 0) {
        PyErr_Format(PyExc_TypeError, "%s is abstract: make one of its kinds", type->tp_name);
        return NULL;
    }
    Txn *self = (Txn *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* Out of the cyclic GC's lists (see _cmessage.c's untracked): a transaction lives up to
     * 64*T1 and four are made a call. Its one cycle, through its context, is cut by release()
     * when it ends; the engine (tu) holds it only while it runs. */
    PyObject_GC_UnTrack(self);
    self->kind = kind;
    self->state = TERMINATED;
    PyObject **fields[] = {&self->key, &self->peer, &self->tu, &self->config, &self->context,
                           &self->request, &self->ack, &self->ack_template,
                           &self->last_response};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        Py_INCREF(Py_None);
        *fields[i] = Py_None;
    }
    self->deadlines = PyDict_New();
    if (self->deadlines == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int config_float(PyObject *config, PyObject *name, double *out) {
    PyObject *v = PyObject_GetAttr(config, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int Txn_init(Txn *self, PyObject *args, PyObject *kwds) {
    static char *client_invite_kw[] = {"key", "peer", "tu", "config", "request",
                                       "ack_template", NULL};
    static char *other_kw[] = {"key", "peer", "tu", "config", "request", NULL};
    PyObject *key, *peer, *tu, *config, *request, *ack_template = Py_None;
    int ok = self->kind == CLIENT_INVITE
                 ? PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOOO", client_invite_kw, &key,
                                               &peer, &tu, &config, &request, &ack_template)
                 : PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOO", other_kw, &key, &peer,
                                               &tu, &config, &request);
    if (!ok)
        return -1;
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "transaction tables not bound (machines())");
        return -1;
    }
    if (PyTuple_GET_SIZE(args) || kwds == NULL ||
        PyDict_GET_SIZE(kwds) != (self->kind == CLIENT_INVITE ? 6 : 5)) {
        PyErr_SetString(PyExc_TypeError, "every field is a required keyword argument");
        return -1;
    }
    if (config_float(config, s_t1, &self->t1) < 0 || config_float(config, s_t2, &self->t2) < 0 ||
        config_float(config, s_t4, &self->t4) < 0 ||
        config_float(config, s_timer_d, &self->timer_d) < 0 ||
        config_float(config, s_timer_c, &self->timer_c) < 0)
        return -1;
    PyObject *transport = PyObject_GetAttr(peer, s_transport);
    if (transport == NULL)
        return -1;
    self->udp = transport == udp;
    Py_DECREF(transport);
    set_field(&self->key, key);
    set_field(&self->peer, peer);
    set_field(&self->tu, tu);
    set_field(&self->config, config);
    set_field(&self->request, request);
    set_field(&self->ack_template, ack_template);
    set_field(&self->ack, Py_None);
    set_field(&self->last_response, Py_None);
    set_field(&self->context, Py_None);
    PyDict_Clear(self->deadlines);
    self->state = initial[self->kind];
    self->interval = self->t1;
    self->timer_c_at = 0.0;
    return 0;
}

static int Txn_traverse(Txn *self, visitproc visit, void *arg) {
    Py_VISIT(self->key);
    Py_VISIT(self->peer);
    Py_VISIT(self->tu);
    Py_VISIT(self->config);
    Py_VISIT(self->deadlines);
    Py_VISIT(self->context);
    Py_VISIT(self->request);
    Py_VISIT(self->ack);
    Py_VISIT(self->ack_template);
    Py_VISIT(self->last_response);
    return 0;
}

static int Txn_clear(Txn *self) {
    Py_CLEAR(self->key);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->tu);
    Py_CLEAR(self->config);
    Py_CLEAR(self->deadlines);
    Py_CLEAR(self->context);
    Py_CLEAR(self->request);
    Py_CLEAR(self->ack);
    Py_CLEAR(self->ack_template);
    Py_CLEAR(self->last_response);
    return 0;
}

static void Txn_dealloc(Txn *self) {
    PyObject_GC_UnTrack(self);
    Txn_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- the types ---------------------------------------------------------------------------- */

#define FAST(name, doc) {#name, (PyCFunction)(void (*)(void))Txn_##name, METH_FASTCALL, doc}

static PyMethodDef Transaction_methods[] = {
    FAST(fire, "fire(event, now, out, payload=None) -> bool: False when the state ignores it"),
    FAST(timer_fired, "timer_fired(timer, now, out)"),
    {"terminate", (PyCFunction)Txn_terminate, METH_NOARGS,
     "Stop the transaction without further events (e.g. on shutdown)."},
    {NULL}};

static PyMemberDef Transaction_members[] = {
    {"key", T_OBJECT, offsetof(Txn, key), READONLY, NULL},
    {"peer", T_OBJECT, offsetof(Txn, peer), READONLY, NULL},
    {"tu", T_OBJECT, offsetof(Txn, tu), READONLY, NULL},
    {"config", T_OBJECT, offsetof(Txn, config), READONLY, NULL},
    {"deadlines", T_OBJECT, offsetof(Txn, deadlines), READONLY, "armed timers, by name"},
    {"context", T_OBJECT, offsetof(Txn, context), 0, "the proxy's per-request state"},
    {NULL}};

static PyGetSetDef Transaction_getset[] = {
    {"state", (getter)Txn_get_state, NULL, NULL, NULL},
    {"_interval", (getter)Txn_get_interval, NULL, NULL, NULL},
    {NULL}};

static PyMethodDef ClientTransaction_methods[] = {
    FAST(receive_response, "receive_response(msg, now, out)"),
    {NULL}};

static PyMemberDef ClientTransaction_members[] = {
    {"request", T_OBJECT, offsetof(Txn, request), READONLY, "the request as sent"},
    {"ack", T_OBJECT, offsetof(Txn, ack), READONLY, NULL},
    {NULL}};

static PyMethodDef ClientInvite_methods[] = {
    FAST(start, "start(now, out): send the request, arm Timers A, B and C"),
    FAST(arm_timer_c, "arm_timer_c(delay, now)"),
    {NULL}};

static PyMemberDef ClientInvite_members[] = {
    {"ack_template", T_OBJECT, offsetof(Txn, ack_template), READONLY, NULL},
    {"timer_c_at", T_DOUBLE, offsetof(Txn, timer_c_at), READONLY, NULL},
    {NULL}};

static PyMethodDef ClientNonInvite_methods[] = {
    FAST(start, "start(now, out): send the request, arm Timers E and F"),
    {NULL}};

static PyMethodDef ServerTransaction_methods[] = {
    FAST(receive_request, "receive_request(now, out): a retransmission of the request"),
    FAST(send_response, "send_response(data, status, now, out) -> bool"),
    {NULL}};

static PyMemberDef ServerTransaction_members[] = {
    {"request", T_OBJECT, offsetof(Txn, request), READONLY,
     "the request, to answer it; released once a final response is sent"},
    {"last_response", T_OBJECT, offsetof(Txn, last_response), READONLY, NULL},
    {NULL}};

#define TXN_TYPE(var, name, base, doc, methods, members, getset)                              \
    static PyTypeObject var = {                                                               \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stirshaken_proxy.transaction._cmachine." name, \
        .tp_basicsize = sizeof(Txn),                                                           \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,            \
        .tp_doc = doc,                                                                         \
        .tp_new = Txn_new,                                                                     \
        .tp_init = (initproc)Txn_init,                                                         \
        .tp_dealloc = (destructor)Txn_dealloc,                                                 \
        .tp_traverse = (traverseproc)Txn_traverse,                                             \
        .tp_clear = (inquiry)Txn_clear,                                                        \
        .tp_methods = methods,                                                                 \
        .tp_members = members,                                                                 \
        .tp_getset = getset,                                                                   \
        .tp_base = base,                                                                       \
    };

TXN_TYPE(TransactionType, "Transaction", NULL, "A transaction (RFC 3261 §17).",
         Transaction_methods, Transaction_members, Transaction_getset)
TXN_TYPE(ClientTransactionType, "ClientTransaction", &TransactionType, NULL,
         ClientTransaction_methods, ClientTransaction_members, NULL)
TXN_TYPE(ServerTransactionType, "ServerTransaction", &TransactionType, NULL,
         ServerTransaction_methods, ServerTransaction_members, NULL)
TXN_TYPE(ClientInviteType, "ClientInvite", &ClientTransactionType,
         "INVITE client transaction, RFC 3261 §17.1.1 (Figure 5) and RFC 6026 §8.4.",
         ClientInvite_methods, ClientInvite_members, NULL)
TXN_TYPE(ClientNonInviteType, "ClientNonInvite", &ClientTransactionType,
         "Non-INVITE client transaction, RFC 3261 §17.1.2 (Figure 6).",
         ClientNonInvite_methods, NULL, NULL)
TXN_TYPE(ServerInviteType, "ServerInvite", &ServerTransactionType,
         "INVITE server transaction, RFC 3261 §17.2.1 (Figure 7) and RFC 6026 §8.7.", NULL,
         NULL, NULL)
TXN_TYPE(ServerNonInviteType, "ServerNonInvite", &ServerTransactionType,
         "Non-INVITE server transaction, RFC 3261 §17.2.2 (Figure 8).", NULL, NULL, NULL)

/* -- bind: the tables and the objects the Python reference defines ------------------------ */

static int member_index(PyObject *member, PyObject *const *members, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (members[i] == member)
            return i;
    }
    PyErr_Format(PyExc_ValueError, "not a %s: %R", what, member);
    return -1;
}

static int bind_members(PyObject *enum_type, PyObject **into, const char *const *names, int n) {
    PyObject *list = PySequence_List(enum_type);
    if (list == NULL)
        return -1;
    if (PyList_GET_SIZE(list) != n) {
        PyErr_Format(PyExc_ValueError, "%R: %d members expected", enum_type, n);
        Py_DECREF(list);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *member = PyList_GET_ITEM(list, i);
        PyObject *name = PyObject_GetAttrString(member, "name");
        if (name == NULL) {
            Py_DECREF(list);
            return -1;
        }
        int same = PyUnicode_CompareWithASCIIString(name, names[i]) == 0;
        Py_DECREF(name);
        if (!same) {
            PyErr_Format(PyExc_ValueError, "%R: member %d is not %s", enum_type, i, names[i]);
            Py_DECREF(list);
            return -1;
        }
        Py_INCREF(member);
        Py_XSETREF(into[i], member);
    }
    Py_DECREF(list);
    return 0;
}

static int bind_table(int kind, PyObject *cls) {
    PyObject *init = PyObject_GetAttrString(cls, "INITIAL");
    if (init == NULL)
        return -1;
    initial[kind] = member_index(init, states, N_STATES, "State");
    Py_DECREF(init);
    if (initial[kind] < 0)
        return -1;
    PyObject *tbl = PyObject_GetAttrString(cls, "TABLE");
    if (tbl == NULL)
        return -1;
    if (!PyDict_Check(tbl)) {
        PyErr_SetString(PyExc_TypeError, "TABLE: a dict");
        Py_DECREF(tbl);
        return -1;
    }
    for (int s = 0; s < N_STATES; s++)
        for (int e = 0; e < N_EVENTS; e++)
            table[kind][s][e] = (Entry){.next = -1};
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(tbl, &pos, &k, &v)) {
        PyObject *steps;
        if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) != 2 || !PyTuple_Check(v) ||
            PyTuple_GET_SIZE(v) != 2 || !PyTuple_Check(steps = PyTuple_GET_ITEM(v, 1)) ||
            PyTuple_GET_SIZE(steps) > MAX_STEPS) {
            PyErr_Format(PyExc_ValueError, "%R: a table entry of another form", k);
            goto fail;
        }
        int s = member_index(PyTuple_GET_ITEM(k, 0), states, N_STATES, "State");
        int e = s < 0 ? -1 : member_index(PyTuple_GET_ITEM(k, 1), events, N_EVENTS, "Event");
        int next = e < 0 ? -1 : member_index(PyTuple_GET_ITEM(v, 0), states, N_STATES, "State");
        if (next < 0)
            goto fail;
        Entry entry = {.next = (signed char)next, .n = (unsigned char)PyTuple_GET_SIZE(steps)};
        for (int i = 0; i < entry.n; i++) {
            PyObject *name = PyObject_GetAttrString(PyTuple_GET_ITEM(steps, i), "__name__");
            if (name == NULL)
                goto fail;
            int found = -1;
            for (int j = 0; j < N_STEP_KINDS && found < 0; j++) {
                if (PyUnicode_CompareWithASCIIString(name, STEP_NAMES[j]) == 0)
                    found = j;
            }
            if (found < 0) {
                PyErr_Format(PyExc_ValueError, "step %R has no compiled counterpart", name);
                Py_DECREF(name);
                goto fail;
            }
            Py_DECREF(name);
            entry.steps[i] = (unsigned char)found;
        }
        table[kind][s][e] = entry;
    }
    Py_DECREF(tbl);
    return 0;
fail:
    Py_DECREF(tbl);
    return -1;
}

static PyObject *bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    /* bind(State, Event, Send, udp, no_ack, (ClientInvite, ClientNonInvite, ServerInvite,
     *      ServerNonInvite)): the reference's members and tables. */
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "bind() takes 6 arguments");
        return NULL;
    }
    bound = 0;
    if (bind_members(args[0], states, STATE_NAMES, N_STATES) < 0 ||
        bind_members(args[1], events, EVENT_NAMES, N_EVENTS) < 0)
        return NULL;
    for (int i = TIMER_A; i < N_EVENTS; i++) {
        PyObject *value = PyObject_GetAttrString(events[i], "value");
        if (value == NULL)
            return NULL;
        if (!PyUnicode_CheckExact(value)) {
            Py_DECREF(value);
            PyErr_SetString(PyExc_TypeError, "a timer event's value: a str");
            return NULL;
        }
        Py_XSETREF(timer_names[i], value);
    }
    if (!PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Send: a tuple type");
        return NULL;
    }
    Py_INCREF(args[2]);
    Py_XSETREF(send_type, (PyTypeObject *)args[2]);
    Py_INCREF(args[3]);
    Py_XSETREF(udp, args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(no_ack, args[4]);
    PyObject *classes = args[5];
    if (!PyTuple_Check(classes) || PyTuple_GET_SIZE(classes) != N_KINDS) {
        PyErr_SetString(PyExc_TypeError, "the four transaction classes, in a tuple");
        return NULL;
    }
    for (int kind = 0; kind < N_KINDS; kind++) {
        if (bind_table(kind, PyTuple_GET_ITEM(classes, kind)) < 0)
            return NULL;
    }
    bound = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(State, Event, Send, udp, no_ack, classes): the reference's tables"},
    {NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cmachine",
    "RFC 3261 transactions in C (transaction/machine.py is the reference).", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cmachine(void) {
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_timers, "timers"},       {&s_push, "push"},
                 {&s_on_response, "on_response"}, {&s_on_timeout, "on_timeout"},
                 {&s_on_terminated, "on_terminated"}, {&s_on_timer_c, "on_timer_c"},
                 {&s_status, "status"},       {&s_index, "index"},
                 {&s_to, "to"},               {&s_header_line, "header_line"},
                 {&s_transport, "transport"}, {&s_t1, "t1"},
                 {&s_t2, "t2"},               {&s_t4, "t4"},
                 {&s_timer_d, "timer_d"},     {&s_timer_c, "timer_c"}};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    }
    if ((empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    PyTypeObject *types[] = {&TransactionType,  &ClientTransactionType, &ServerTransactionType,
                             &ClientInviteType, &ClientNonInviteType,   &ServerInviteType,
                             &ServerNonInviteType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        const char *dot = strrchr(types[i]->tp_name, '.');
        if (PyModule_AddObjectRef(m, dot + 1, (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
