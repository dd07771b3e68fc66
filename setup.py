"""The C data-plane loop is an optional extension: without a C compiler the
router installs and runs its pure-Python loop (``mesh status`` says which)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshrouter.dataplane._dataplane",
            ["meshrouter/dataplane/_dataplane.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
