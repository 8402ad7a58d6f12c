"""The /execute stream's encoder: one ASCII line per object, never a blank or split line."""

import json
import math
import unittest

from moat_interpreter.ndjson import encode_line, sanitize


class EncodeLineTest(unittest.TestCase):
    def assert_one_ascii_line(self, line):
        self.assertIsInstance(line, bytes)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1, line)
        self.assertTrue(all(b < 0x80 for b in line), line)
        self.assertNotEqual(line.strip(), b"")

    def test_non_ascii_is_escaped(self):
        obj = {"type": "stdout", "text": "h\u00e9llo \u2713 \u65e5\u672c \U0001F600\n"}
        line = encode_line(obj)
        self.assert_one_ascii_line(line)
        self.assertIn(b"\\u00e9", line)
        self.assertIn(b"\\ud83d\\ude00", line)  # astral characters as surrogate pairs, as JSON wants
        self.assertEqual(json.loads(line), obj)

    def test_newlines_and_controls_stay_inside_strings(self):
        obj = {"type": "stdout", "text": "a\nb\r\n\x00\x1b[31m\u2028\u2029end"}
        line = encode_line(obj)
        self.assert_one_ascii_line(line)
        self.assertEqual(json.loads(line), obj)

    def test_every_split_of_a_line_decodes_as_ascii(self):
        # The client decodes each network chunk on its own: with ASCII there is nothing to split.
        line = encode_line({"text": "\u00e9\u65e5" * 50})
        for cut in range(len(line)):
            self.assertEqual((line[:cut].decode("ascii") + line[cut:].decode("ascii")).encode(), line)

    def test_nan_and_infinity_become_null(self):
        line = encode_line({"json": {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5]}})
        self.assert_one_ascii_line(line)
        self.assertNotIn(b"NaN", line)
        self.assertNotIn(b"Infinity", line)
        self.assertEqual(json.loads(line), {"json": {"a": None, "b": [None, None, 1.5]}})

    def test_unknown_values_become_json(self):
        class NumpyLike:
            def tolist(self):
                return [1, float("nan")]

        class Opaque:
            def __str__(self):
                return "opaque \u00e9"

        obj = {"t": (1, 2), "s": {3}, 4: "int key", "n": NumpyLike(), "o": Opaque()}
        self.assertEqual(
            json.loads(encode_line(obj)),
            {"t": [1, 2], "s": [3], "4": "int key", "n": [1, None], "o": "opaque \u00e9"},
        )

    def test_deep_nesting_is_bounded(self):
        deep = []
        cur = deep
        for _ in range(200):
            nxt = []
            cur.append(nxt)
            cur = nxt
        self.assert_one_ascii_line(encode_line({"deep": deep}))

    def test_lone_surrogates_are_escaped(self):
        line = encode_line({"text": "bad \udcff byte"})
        self.assert_one_ascii_line(line)
        self.assertIn(b"\\udcff", line)

    def test_sanitize_keeps_plain_values(self):
        value = {"a": [1, 2.5, "x", None, True]}
        self.assertEqual(sanitize(value), value)
        self.assertTrue(math.isfinite(sanitize(1e308)))


if __name__ == "__main__":
    unittest.main()
