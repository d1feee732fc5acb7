# Walk a JSON text in a buffer without building it. json.loads of a whole
# lighting timeline builds a list and a str for every window: ~110 bytes of heap
# per window on the 64-bit unix port, nearly three times the text. With this the
# caller finds each member's or item's place in the text and json.loads the
# small values one at a time, so parsing costs the heap of one window at a time.
#
# The scanner only finds where values start and end; what a value holds is left
# to json.loads (the small pieces), so escapes, numbers and literals keep the
# json module's rules. Errors are ValueError, as json.loads raises.
import json

_QUOTE = 34
_BACKSLASH = 92
_WS = (32, 9, 10, 13)
# skip()'s byte classes: 0 other, 1 quote, 2 [ {, 3 ] }, 4 comma, 5 whitespace (one lookup a byte)
_KIND = bytes(5 if c in _WS else 1 if c == 34 else 2 if c in (91, 123) else 3 if c in (93, 125)
              else 4 if c == 44 else 0 for c in range(256))
_ENDS = b",]} \t\r\n"  # what ends a number or a literal


class JsonScan:
    def __init__(self, text, start=0, end=None):
        """``text``: bytes, bytearray or memoryview (read in place, never copied)."""
        self.b = text if type(text) is memoryview else memoryview(text)
        self.i = start
        self.n = len(self.b) if end is None else end
        self.items = 0  # after skip() of an array: how many items it holds

    def peek(self):
        """The next byte that is not whitespace (-1 at the end); the position moves to it."""
        b = self.b
        i = self.i
        n = self.n
        while i < n and b[i] in _WS:
            i += 1
        self.i = i
        return b[i] if i < n else -1

    def eat(self, ch):
        """Step over byte ``ch`` if it comes next."""
        if self.peek() == ch:
            self.i += 1
            return True
        return False

    def end(self):
        """Fail unless only whitespace is left."""
        if self.peek() != -1:
            raise ValueError("extra data at %d" % self.i)

    def _str_end(self, i):
        b = self.b
        n = self.n
        i += 1
        while i < n:
            c = b[i]
            if c == _QUOTE:
                return i + 1
            i += 2 if c == _BACKSLASH else 1
        raise ValueError("unterminated string")

    def skip(self):
        """Step over the next value; -> (start, end) of its text. For an array, ``items`` is
        then its number of items."""
        c = self.peek()
        b = self.b
        n = self.n
        a = i = self.i
        if c == _QUOTE:
            i = self._str_end(i)
        elif c == 91 or c == 123:
            kind = _KIND
            depth = 0
            items = 0
            empty = True
            while True:
                if i >= n:
                    raise ValueError("unterminated %s" % ("array" if b[a] == 91 else "object"))
                k = kind[b[i]]
                if k == 0:  # digits, letters, ':' ... (most of a timeline)
                    empty = False
                elif k == 1:  # "
                    i = self._str_end(i)
                    empty = False
                    continue
                elif k == 2:  # [ {
                    depth += 1
                    if depth > 1:
                        empty = False
                elif k == 3:  # ] }
                    depth -= 1
                    if not depth:
                        i += 1
                        break
                elif k == 4 and depth == 1:  # ,
                    items += 1
                i += 1
            self.items = 0 if empty else items + 1
        else:
            while i < n and b[i] not in _ENDS:
                i += 1
            if i == a:
                raise ValueError("no value at %d" % a)
        self.i = i
        return a, i

    def value(self):
        """The next value, decoded (keep it to small values: this is what builds objects)."""
        a, e = self.skip()
        # MicroPython's json.loads reads any buffer in place (the stubs say str or bytes)
        return json.loads(self.b[a:e])  # type: ignore[type-var]

    def members(self):
        """Iterate over the members of the object that comes next: yields each key, with the
        position at its value; the loop body must step over that value (value(), skip(), ...)."""
        if not self.eat(123):
            raise ValueError("not an object at %d" % self.i)
        if self.eat(125):
            return
        while True:
            if self.peek() != _QUOTE:
                raise ValueError("no key at %d" % self.i)
            k = self.value()
            if not self.eat(58):  # :
                raise ValueError("no ':' at %d" % self.i)
            yield k
            if self.eat(125):
                return
            if not self.eat(44):
                raise ValueError("no ',' or '}' at %d" % self.i)

    def elements(self):
        """Iterate over the items of the array that comes next (as members())."""
        if not self.eat(91):
            raise ValueError("not an array at %d" % self.i)
        if self.eat(93):
            return
        while True:
            yield
            if self.eat(93):
                return
            if not self.eat(44):
                raise ValueError("no ',' or ']' at %d" % self.i)
