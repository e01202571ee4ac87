"""Pure-Python twins of the compiled codecs: the readable specification the
Cython code is tested against.  Never imported by the package itself."""
