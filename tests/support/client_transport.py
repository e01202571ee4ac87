"""A client connection's transport without a socket: what a ClientProtocol
writes, and whether it is being read."""

__all__ = ["FakeClientTransport"]


class FakeClientTransport:
    def __init__(self):
        self.out = []        # each write, as bytes
        self.reading = True  # pause_reading / resume_reading

    def write(self, b):
        self.out.append(bytes(b))

    def writelines(self, bs):
        self.out.extend(bytes(b) for b in bs)

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return False

    def get_extra_info(self, name):
        return None

    def close(self):
        pass
