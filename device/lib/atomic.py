# Small files on flash replaced whole: write a temporary file, then rename it over
# the old one, so a power cut leaves the old content or the new, never half of each.
# LittleFS (the esp32 default) and POSIX rename over an existing file; FAT does not,
# so there the old file is removed first (a cut in between loses the file).
import os


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


def read(path):
    """The file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
