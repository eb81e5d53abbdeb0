"""The compiled core (C, the CPython API) beside the pure-Python package: built when a C
compiler and Python's headers are there, skipped otherwise (the Python core is used then,
and the service says so at start). Its ES256 signer also needs OpenSSL's headers (Debian's
libssl-dev); without them signing stays with `cryptography`."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror=implicit"]

setup(ext_modules=[
    Extension("stirshaken_proxy.sip._cmessage", ["stirshaken_proxy/sip/_cmessage.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("stirshaken_proxy.transaction._cmachine",
              ["stirshaken_proxy/transaction/_cmachine.c"], extra_compile_args=FLAGS,
              optional=True),
    Extension("stirshaken_proxy.io._cpump", ["stirshaken_proxy/io/_cpump.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("stirshaken_proxy.stir._es256", ["stirshaken_proxy/stir/_es256.c"],
              extra_compile_args=FLAGS, libraries=["crypto"], optional=True),
])
