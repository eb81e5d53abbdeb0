/* ES256 (ECDSA P-256 with SHA-256, RFC 7518 §3.4) signing with nonces made ahead.
 *
 * The costly half of an ECDSA signature is the nonce's point k*G, which does not depend on the
 * message. Made one at a time between SIP messages it runs with cold caches (the generator
 * table alone is ~150 KB); made `batch` at a time in one loop it runs warm. Each signature then
 * only hashes, computes s = k^-1 (z + r*d) mod n and writes r||s.
 *
 * Made ahead (the default), the batches are made by a thread of the signer's own, which never
 * touches a Python object: when the pool falls to half, the signature that took it there wakes
 * the thread, which fills it again while the event loop's thread goes on. A signature never
 * waits for a batch (a batch of 32 is ~0.6 ms, which every 32nd INVITE would otherwise carry):
 * with the pool empty it makes its one nonce itself. The thread signs nothing; it works on a
 * copy of the key. Without `ahead`, the signature that finds the pool empty makes the batch.
 *
 * A nonce is used once: it is taken out of the pool before it is used and cleared after. A
 * process that forks (the service's workers) must not use its parent's nonces: an atfork
 * handler moves a generation counter, and a pool made in another generation is discarded (the
 * child has no copy of the thread either: it starts its own). OpenSSL's ECDSA_sign_setup /
 * ECDSA_do_sign_ex are the API made for this (deprecated in OpenSSL 3 but present in every 3.x
 * libcrypto).
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <pthread.h>
#include <time.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

static volatile unsigned long fork_generation = 0;

/* At exit, OpenSSL frees its state (its own atexit handler, after Python's finalisation): no
 * nonce thread may be inside OpenSSL then. Each marks itself busy around a nonce, under
 * `exiting_lock`; at_exit (Py_AtExit) stops new nonces and waits for the busy ones. */
static pthread_mutex_t exiting_lock = PTHREAD_MUTEX_INITIALIZER;
static int exiting = 0, busy = 0;

static void
after_fork_in_child(void)
{
    fork_generation++;
    /* The parent's threads are not here: none of them is busy in this process. */
    pthread_mutex_init(&exiting_lock, NULL);
    busy = 0;
}

static void
at_exit(void)
{
    struct timespec pause = {0, 200000};
    pthread_mutex_lock(&exiting_lock);
    exiting = 1;
    for (int waited = 0; busy > 0 && waited < 5000; waited++) {  /* a nonce is ~50 µs */
        pthread_mutex_unlock(&exiting_lock);
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&exiting_lock);
    }
    pthread_mutex_unlock(&exiting_lock);
}

/* 0 and marked busy, or -1: the process is exiting (no more nonces on threads). */
static int
enter_openssl(void)
{
    pthread_mutex_lock(&exiting_lock);
    int ok = !exiting;
    if (ok)
        busy++;
    pthread_mutex_unlock(&exiting_lock);
    return ok ? 0 : -1;
}

static void
leave_openssl(void)
{
    pthread_mutex_lock(&exiting_lock);
    busy--;
    pthread_mutex_unlock(&exiting_lock);
}

typedef struct {
    PyObject_HEAD
    EC_KEY *key;
    BIGNUM **kinv;
    BIGNUM **r;
    int batch;      /* the pool's size: nonces made per batch */
    int count;      /* nonces in the pool */
    int ahead;      /* batches made by the thread */
    unsigned long generation;
    unsigned long long made;  /* nonces made (tests read it) */
    /* the thread (ahead): the pool, count and made are under `lock` while it runs */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    int running;    /* a thread was started in this generation and not joined */
    int stop;       /* the thread is asked to end */
    int filling;    /* the thread is making a batch */
    EC_KEY *thread_key;  /* the thread's copy of the key */
} Signer;

static void
drop_pool(Signer *self)
{
    for (int i = 0; i < self->count; i++) {
        BN_clear_free(self->kinv[i]);
        BN_clear_free(self->r[i]);
        self->kinv[i] = self->r[i] = NULL;
    }
    self->count = 0;
}

/* One nonce (its k^-1 and r) with `key`; 0, or -1 (OpenSSL's error cleared). */
static int
make_nonce(EC_KEY *key, BN_CTX *ctx, BIGNUM **kinv, BIGNUM **r)
{
    *kinv = *r = NULL;
    if (!ECDSA_sign_setup(key, ctx, kinv, r)) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* The pool filled in the caller's thread (without `ahead`). */
static int
refill(Signer *self)
{
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        return -1;
    while (self->count < self->batch) {
        BIGNUM *kinv, *r;
        if (make_nonce(self->key, ctx, &kinv, &r) < 0) {
            BN_CTX_free(ctx);
            return -1;
        }
        self->kinv[self->count] = kinv;
        self->r[self->count] = r;
        self->count++;
        self->made++;
    }
    BN_CTX_free(ctx);
    return 0;
}

/* The thread: waits until the pool is at half or below, then fills it, a nonce at a time
 * outside the lock. Holds no Python object and never the GIL. */
static void *
fill_ahead(void *arg)
{
    Signer *self = arg;
    BN_CTX *ctx = BN_CTX_new();
    pthread_mutex_lock(&self->lock);
    int failed = 0;  /* the last batch stopped on a failure: wait to be woken, not spin */
    while (!self->stop) {
        if (ctx == NULL || failed || self->count > self->batch / 2) {
            failed = 0;
            pthread_cond_wait(&self->wake, &self->lock);
            continue;
        }
        self->filling = 1;
        while (!self->stop && self->count < self->batch) {
            pthread_mutex_unlock(&self->lock);
            BIGNUM *kinv, *r;
            if (enter_openssl() < 0) {  /* exiting: this thread makes no more */
                pthread_mutex_lock(&self->lock);
                self->stop = 1;
                ctx = NULL;  /* nor frees it: OpenSSL may be freeing its own state */
                break;
            }
            failed = make_nonce(self->thread_key, ctx, &kinv, &r) < 0;
            leave_openssl();
            pthread_mutex_lock(&self->lock);
            if (failed)
                break;  /* the signatures make their own meanwhile */
            if (self->count < self->batch) {
                self->kinv[self->count] = kinv;
                self->r[self->count] = r;
                self->count++;
                self->made++;
            } else {
                BN_clear_free(kinv);
                BN_clear_free(r);
            }
        }
        self->filling = 0;
    }
    pthread_mutex_unlock(&self->lock);
    BN_CTX_free(ctx);  /* (NULL: nothing) */
    return NULL;
}

/* Ends the thread of this generation, if there is one. It holds no Python object and never
 * waits for the GIL: joined with the GIL held, it finishes at most the nonce it is making. */
static void
stop_thread(Signer *self)
{
    if (!self->running || self->generation != fork_generation)
        return;
    pthread_mutex_lock(&self->lock);
    self->stop = 1;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    pthread_join(self->thread, NULL);
    self->running = 0;
    self->stop = 0;
}

/* What an initialised signer holds, let go: its thread stopped, its pool cleared, its keys
 * and (in the generation that made them) its lock. The pool's arrays stay. */
static void
release(Signer *self)
{
    stop_thread(self);
    drop_pool(self);
    EC_KEY_free(self->key);
    EC_KEY_free(self->thread_key);
    self->key = self->thread_key = NULL;
    if (self->ahead && self->generation == fork_generation) {
        pthread_cond_destroy(&self->wake);
        pthread_mutex_destroy(&self->lock);
    }
    self->ahead = 0;
}

static void
Signer_dealloc(Signer *self)
{
    release(self);
    PyMem_Free(self->kinv);
    PyMem_Free(self->r);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Signer_init(Signer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"der", "batch", "ahead", NULL};
    Py_buffer der;
    int batch = 32, ahead = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|ip", kwlist, &der, &batch, &ahead))
        return -1;
    if (batch < 1 || batch > 4096) {
        PyBuffer_Release(&der);
        PyErr_SetString(PyExc_ValueError, "batch must be 1..4096");
        return -1;
    }
    const unsigned char *p = der.buf;
    EVP_PKEY *pkey = d2i_AutoPrivateKey(NULL, &p, (long)der.len);
    PyBuffer_Release(&der);
    EC_KEY *key = pkey != NULL ? EVP_PKEY_get1_EC_KEY(pkey) : NULL;
    EVP_PKEY_free(pkey);
    if (key == NULL || EC_GROUP_get_curve_name(EC_KEY_get0_group(key)) != NID_X9_62_prime256v1) {
        ERR_clear_error();
        EC_KEY_free(key);
        PyErr_SetString(PyExc_ValueError, "not a P-256 private key (DER)");
        return -1;
    }
    EC_KEY *thread_key = NULL;
    if (ahead && (thread_key = EC_KEY_dup(key)) == NULL) {
        ERR_clear_error();
        EC_KEY_free(key);
        PyErr_NoMemory();
        return -1;
    }
    if (self->key != NULL)  /* __init__ called again: the first one's thread and pool go */
        release(self);
    PyMem_Free(self->kinv);
    PyMem_Free(self->r);
    self->kinv = PyMem_Calloc((size_t)batch, sizeof(BIGNUM *));
    self->r = PyMem_Calloc((size_t)batch, sizeof(BIGNUM *));
    if (self->kinv == NULL || self->r == NULL) {
        EC_KEY_free(key);
        EC_KEY_free(thread_key);
        PyErr_NoMemory();
        return -1;
    }
    if (ahead && (pthread_mutex_init(&self->lock, NULL) != 0 ||
                  pthread_cond_init(&self->wake, NULL) != 0)) {
        EC_KEY_free(key);
        EC_KEY_free(thread_key);
        PyErr_SetString(PyExc_RuntimeError, "ES256: no lock for the nonce thread");
        return -1;
    }
    self->key = key;
    self->thread_key = thread_key;
    self->batch = batch;
    self->count = 0;
    self->ahead = ahead;
    self->running = self->stop = self->filling = 0;
    self->generation = fork_generation;
    return 0;
}

/* A nonce for the signature: from the pool (waking the thread at half), or made here. 0, or
 * -1 with a Python exception set. */
static int
take_nonce(Signer *self, BIGNUM **kinv, BIGNUM **r)
{
    if (self->generation != fork_generation) {
        /* A forked child: not the parent's nonces; and no thread here, whatever the parent's
         * state (its lock is made anew: the parent's thread may have held it at the fork). */
        drop_pool(self);
        if (self->ahead) {
            pthread_mutex_init(&self->lock, NULL);
            pthread_cond_init(&self->wake, NULL);
        }
        self->running = self->stop = self->filling = 0;
        self->generation = fork_generation;
    }
    if (!self->ahead) {
        if (self->count == 0 && refill(self) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "ES256: could not make nonces");
            return -1;
        }
        self->count--;
        *kinv = self->kinv[self->count];
        *r = self->r[self->count];
        self->kinv[self->count] = self->r[self->count] = NULL;
        return 0;
    }
    pthread_mutex_lock(&self->lock);
    int have = self->count > 0;
    if (have) {
        self->count--;
        *kinv = self->kinv[self->count];
        *r = self->r[self->count];
        self->kinv[self->count] = self->r[self->count] = NULL;
    }
    if (self->count <= self->batch / 2 && !self->filling) {
        if (!self->running) {
            if (pthread_create(&self->thread, NULL, fill_ahead, self) == 0)
                self->running = 1;
        } else {
            pthread_cond_signal(&self->wake);
        }
    }
    if (!have)
        self->made++;  /* the one made below */
    pthread_mutex_unlock(&self->lock);
    if (!have && make_nonce(self->key, NULL, kinv, r) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "ES256: could not make a nonce");
        return -1;
    }
    return 0;
}

/* The raw r||s of ES256 over a SHA-256 digest, with a nonce from the pool. 0, or -1 with a
 * Python exception set. */
static int
sign_digest(Signer *self, const unsigned char *digest, unsigned char raw[64])
{
    if (self->key == NULL) {
        PyErr_SetString(PyExc_ValueError, "signer not initialised");
        return -1;
    }
    BIGNUM *kinv, *r;
    if (take_nonce(self, &kinv, &r) < 0)
        return -1;
    ECDSA_SIG *sig = ECDSA_do_sign_ex(digest, SHA256_DIGEST_LENGTH, kinv, r, self->key);
    BN_clear_free(kinv);
    BN_clear_free(r);
    if (sig == NULL) {  /* s came out 0 for that nonce (probability ~2^-256): a fresh one */
        ERR_clear_error();
        sig = ECDSA_do_sign(digest, SHA256_DIGEST_LENGTH, self->key);
    }
    if (sig == NULL) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "ES256: signing failed");
        return -1;
    }
    const BIGNUM *sr, *ss;
    ECDSA_SIG_get0(sig, &sr, &ss);
    int ok = BN_bn2binpad(sr, raw, 32) == 32 && BN_bn2binpad(ss, raw + 32, 32) == 32;
    ECDSA_SIG_free(sig);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "ES256: signature out of range");
        return -1;
    }
    return 0;
}

/* sign(data) -> the 64-byte r||s of ES256 over data. */
static PyObject *
Signer_sign(Signer *self, PyObject *arg)
{
    Py_buffer data;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    unsigned char raw[64];
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    SHA256(data.buf, (size_t)data.len, digest);
    PyBuffer_Release(&data);
    if (sign_digest(self, digest, raw) < 0)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)raw, 64);
}

static const char B64URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding (RFC 7515 §2) of src into dst; returns the length written. */
static Py_ssize_t
b64url(const unsigned char *src, Py_ssize_t n, char *dst)
{
    char *d = dst;
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8 | src[i + 2];
        *d++ = B64URL[v >> 18];
        *d++ = B64URL[(v >> 12) & 63];
        *d++ = B64URL[(v >> 6) & 63];
        *d++ = B64URL[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)src[i] << 16;
        *d++ = B64URL[v >> 18];
        *d++ = B64URL[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8;
        *d++ = B64URL[v >> 18];
        *d++ = B64URL[(v >> 12) & 63];
        *d++ = B64URL[(v >> 6) & 63];
    }
    return d - dst;
}

/* sign_jws(header_b64, payload) -> "header_b64.b64url(payload).b64url(r||s)": a compact JWS
 * (RFC 7515 §7.1) signed with ES256. header_b64 must be ASCII (it is already base64url);
 * payload is UTF-8 encoded. */
static PyObject *
Signer_sign_jws(Signer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "sign_jws(header_b64: str, payload: str)");
        return NULL;
    }
    Py_ssize_t hlen, plen;
    const char *header = PyUnicode_AsUTF8AndSize(args[0], &hlen);
    if (header == NULL)
        return NULL;
    if (!PyUnicode_IS_ASCII(args[0])) {
        PyErr_SetString(PyExc_ValueError, "header_b64 is not ASCII");
        return NULL;
    }
    const char *payload = PyUnicode_AsUTF8AndSize(args[1], &plen);
    if (payload == NULL)
        return NULL;
    if (plen > (PY_SSIZE_T_MAX - hlen - 100) / 4 * 3) {
        PyErr_SetString(PyExc_OverflowError, "payload too large");
        return NULL;
    }
    Py_ssize_t rem = plen % 3;
    Py_ssize_t total = hlen + 1 + plen / 3 * 4 + (rem ? rem + 1 : 0) + 1 + 86;
    PyObject *out = PyUnicode_New(total, 127);
    if (out == NULL)
        return NULL;
    char *buf = (char *)PyUnicode_DATA(out);
    memcpy(buf, header, (size_t)hlen);
    Py_ssize_t len = hlen;
    buf[len++] = '.';
    len += b64url((const unsigned char *)payload, plen, buf + len);
    unsigned char digest[SHA256_DIGEST_LENGTH];
    unsigned char raw[64];
    SHA256((const unsigned char *)buf, (size_t)len, digest);  /* the JWS signing input */
    if (sign_digest(self, digest, raw) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    buf[len++] = '.';
    len += b64url(raw, 64, buf + len);  /* 86 characters */
    assert(len == total);
    return out;
}

static int
locked(Signer *self)
{
    if (self->ahead && self->generation == fork_generation) {
        pthread_mutex_lock(&self->lock);
        return 1;
    }
    return 0;
}

static PyObject *
Signer_pooled(Signer *self, void *closure)
{
    int held = locked(self);
    long count = self->generation == fork_generation ? self->count : 0;
    if (held)
        pthread_mutex_unlock(&self->lock);
    return PyLong_FromLong(count);
}

static PyObject *
Signer_made(Signer *self, void *closure)
{
    int held = locked(self);
    unsigned long long made = self->made;
    if (held)
        pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(made);
}

/* settle(timeout) -> bool: waits (the GIL released) until the thread has no batch to make:
 * True once the pool is above half and the thread idle. For tests. */
static PyObject *
Signer_settle(Signer *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (!self->ahead || self->generation != fork_generation)
        Py_RETURN_TRUE;
    int settled = 0;
    struct timespec pause = {0, 1000000};
    Py_BEGIN_ALLOW_THREADS
    for (double waited = 0.0; waited <= timeout; waited += 0.001) {
        pthread_mutex_lock(&self->lock);
        settled = !self->filling && (self->count > self->batch / 2 || !self->running);
        pthread_mutex_unlock(&self->lock);
        if (settled)
            break;
        nanosleep(&pause, NULL);
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(settled);
}

static PyMethodDef Signer_methods[] = {
    {"sign", (PyCFunction)Signer_sign, METH_O,
     "sign(data) -> bytes: the raw 64-byte r||s ES256 signature of data."},
    {"sign_jws", (PyCFunction)(void (*)(void))Signer_sign_jws, METH_FASTCALL,
     "sign_jws(header_b64, payload) -> str: the compact JWS, signed with ES256."},
    {"settle", (PyCFunction)Signer_settle, METH_O,
     "settle(timeout) -> bool: waits until the nonce thread has no batch to make."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Signer_getset[] = {
    {"pooled", (getter)Signer_pooled, NULL, "nonces ready in the pool", NULL},
    {"made", (getter)Signer_made, NULL, "nonces made so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SignerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.stir._es256.Signer",
    .tp_basicsize = sizeof(Signer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Signer(der, batch=32, ahead=True): ES256 with a P-256 private key (DER), "
              "nonces made batch at a time (ahead: by a thread of its own).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Signer_init,
    .tp_dealloc = (destructor)Signer_dealloc,
    .tp_methods = Signer_methods,
    .tp_getset = Signer_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_es256", "ES256 signing with nonces made ahead, in batches.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__es256(void)
{
    if (PyType_Ready(&SignerType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0 || Py_AtExit(at_exit) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork or Py_AtExit failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SignerType);
    if (PyModule_AddObject(m, "Signer", (PyObject *)&SignerType) < 0) {
        Py_DECREF(&SignerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
