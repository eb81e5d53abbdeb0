/* ES256 (ECDSA P-256 with SHA-256, RFC 7518 §3.4) signing through OpenSSL's EVP interface.
 *
 * Each signature's nonce k is drawn when the signature is made, by OpenSSL's own ECDSA
 * signing (EVP_PKEY_sign): k mixes fresh DRBG output with the private key and the message's
 * digest (BN_generate_dsa_nonce), so two processes that share a DRBG state (a forked worker
 * before OpenSSL reseeds, a cloned VM, a restored snapshot) still never sign two different
 * messages with one k, which would disclose the private key. Nothing is drawn ahead: no pool,
 * no thread. The signing context is made once per key and used under the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

typedef struct {
    PyObject_HEAD
    EVP_PKEY *pkey;
    EVP_PKEY_CTX *ctx;  /* EVP_PKEY_sign_init'ed once for pkey */
} Signer;

static void
release(Signer *self)
{
    EVP_PKEY_CTX_free(self->ctx);
    EVP_PKEY_free(self->pkey);
    self->ctx = NULL;
    self->pkey = NULL;
}

static void
Signer_dealloc(Signer *self)
{
    release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Signer_init(Signer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"der", NULL};
    Py_buffer der;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &der))
        return -1;
    const unsigned char *p = der.buf;
    EVP_PKEY *pkey = d2i_AutoPrivateKey(NULL, &p, (long)der.len);
    PyBuffer_Release(&der);
    char group[64] = "";
    size_t glen = 0;
    if (pkey == NULL || !EVP_PKEY_is_a(pkey, "EC")
            || !EVP_PKEY_get_utf8_string_param(pkey, "group", group, sizeof(group), &glen)
            || strcmp(group, "prime256v1") != 0) {
        ERR_clear_error();
        EVP_PKEY_free(pkey);
        PyErr_SetString(PyExc_ValueError, "not a P-256 private key (DER)");
        return -1;
    }
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0) {
        ERR_clear_error();
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_free(pkey);
        PyErr_SetString(PyExc_RuntimeError, "ES256: OpenSSL has no signing context for the key");
        return -1;
    }
    release(self);  /* __init__ called again: the first key goes */
    self->pkey = pkey;
    self->ctx = ctx;
    return 0;
}

/* The raw r||s of ES256 over a SHA-256 digest. 0, or -1 with a Python exception set. */
static int
sign_digest(Signer *self, const unsigned char *digest, unsigned char raw[64])
{
    if (self->ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "signer not initialised");
        return -1;
    }
    unsigned char der[80];  /* an ECDSA-Sig-Value of P-256: at most 72 octets */
    size_t len = sizeof(der);
    if (EVP_PKEY_sign(self->ctx, der, &len, digest, SHA256_DIGEST_LENGTH) <= 0) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "ES256: signing failed");
        return -1;
    }
    const unsigned char *q = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &q, (long)len);
    int ok = 0;
    if (sig != NULL) {
        const BIGNUM *sr, *ss;
        ECDSA_SIG_get0(sig, &sr, &ss);
        ok = BN_bn2binpad(sr, raw, 32) == 32 && BN_bn2binpad(ss, raw + 32, 32) == 32;
        ECDSA_SIG_free(sig);
    }
    if (!ok) {
        ERR_clear_error();
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

static PyMethodDef Signer_methods[] = {
    {"sign", (PyCFunction)Signer_sign, METH_O,
     "sign(data) -> bytes: the raw 64-byte r||s ES256 signature of data."},
    {"sign_jws", (PyCFunction)(void (*)(void))Signer_sign_jws, METH_FASTCALL,
     "sign_jws(header_b64, payload) -> str: the compact JWS, signed with ES256."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SignerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stirshaken_proxy.stir._es256.Signer",
    .tp_basicsize = sizeof(Signer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Signer(der): ES256 with a P-256 private key (DER), each nonce drawn as it "
              "signs and hedged with the key and the digest (OpenSSL's EVP_PKEY_sign).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Signer_init,
    .tp_dealloc = (destructor)Signer_dealloc,
    .tp_methods = Signer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_es256", "ES256 signing (OpenSSL EVP, hedged nonces).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__es256(void)
{
    if (PyType_Ready(&SignerType) < 0)
        return NULL;
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
