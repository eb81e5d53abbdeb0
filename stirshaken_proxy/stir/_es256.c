/* ES256 (ECDSA P-256 with SHA-256, RFC 7518 §3.4) signing with nonces made ahead, in batches.
 *
 * The costly half of an ECDSA signature is the nonce's point k*G, which does not depend on the
 * message. Made one at a time between SIP messages it runs with cold caches (the generator
 * table alone is ~150 KB); made `batch` at a time in one loop it runs warm. Each call then
 * only hashes, computes s = k^-1 (z + r*d) mod n and writes r||s.
 *
 * A nonce is used once: it is taken out of the pool before it is used and cleared after. A
 * process that forks (the service's workers) must not use its parent's nonces: an atfork
 * handler moves a generation counter, and a pool made in another generation is discarded.
 * OpenSSL's ECDSA_sign_setup / ECDSA_do_sign_ex are the API made for this (deprecated in
 * OpenSSL 3 but present in every 3.x libcrypto).
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <pthread.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

static volatile unsigned long fork_generation = 0;

static void
after_fork_in_child(void)
{
    fork_generation++;
}

typedef struct {
    PyObject_HEAD
    EC_KEY *key;
    BIGNUM **kinv;
    BIGNUM **r;
    int batch;      /* nonces made per refill */
    int count;      /* nonces in the pool */
    unsigned long generation;
    unsigned long long made;  /* nonces made (tests read it) */
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

static int
refill(Signer *self)
{
    BN_CTX *ctx = BN_CTX_new();
    if (ctx == NULL)
        return -1;
    while (self->count < self->batch) {
        BIGNUM *kinv = NULL, *r = NULL;
        if (!ECDSA_sign_setup(self->key, ctx, &kinv, &r)) {
            ERR_clear_error();
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

static void
Signer_dealloc(Signer *self)
{
    drop_pool(self);
    PyMem_Free(self->kinv);
    PyMem_Free(self->r);
    EC_KEY_free(self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Signer_init(Signer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"der", "batch", NULL};
    Py_buffer der;
    int batch = 32;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|i", kwlist, &der, &batch))
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
    if (self->key != NULL) {  /* __init__ called again */
        drop_pool(self);
        EC_KEY_free(self->key);
    }
    PyMem_Free(self->kinv);
    PyMem_Free(self->r);
    self->kinv = PyMem_Calloc((size_t)batch, sizeof(BIGNUM *));
    self->r = PyMem_Calloc((size_t)batch, sizeof(BIGNUM *));
    if (self->kinv == NULL || self->r == NULL) {
        EC_KEY_free(key);
        self->key = NULL;
        PyErr_NoMemory();
        return -1;
    }
    self->key = key;
    self->batch = batch;
    self->count = 0;
    self->generation = fork_generation;
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
    if (self->generation != fork_generation) {  /* a forked child: not the parent's nonces */
        drop_pool(self);
        self->generation = fork_generation;
    }
    if (self->count == 0 && refill(self) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "ES256: could not make nonces");
        return -1;
    }
    self->count--;
    BIGNUM *kinv = self->kinv[self->count], *r = self->r[self->count];
    self->kinv[self->count] = self->r[self->count] = NULL;
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

static PyObject *
Signer_pooled(Signer *self, void *closure)
{
    return PyLong_FromLong(self->generation == fork_generation ? self->count : 0);
}

static PyObject *
Signer_made(Signer *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->made);
}

static PyMethodDef Signer_methods[] = {
    {"sign", (PyCFunction)Signer_sign, METH_O,
     "sign(data) -> bytes: the raw 64-byte r||s ES256 signature of data."},
    {"sign_jws", (PyCFunction)(void (*)(void))Signer_sign_jws, METH_FASTCALL,
     "sign_jws(header_b64, payload) -> str: the compact JWS, signed with ES256."},
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
    .tp_doc = "Signer(der, batch=32): ES256 with a P-256 private key (DER), nonces made "
              "batch at a time.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Signer_init,
    .tp_dealloc = (destructor)Signer_dealloc,
    .tp_methods = Signer_methods,
    .tp_getset = Signer_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_es256", "ES256 signing with nonces made in batches.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__es256(void)
{
    if (PyType_Ready(&SignerType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
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
