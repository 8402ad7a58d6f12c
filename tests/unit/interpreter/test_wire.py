"""The mapping of Jupyter messages to the client's lines, and the env code for each kernel."""

import unittest

from moat_interpreter.wire import (
    env_restore_code,
    env_save_code,
    env_set_code,
    error_line,
    normalize_language,
    result_line,
)


class ResultLineTest(unittest.TestCase):
    def test_mime_bundle_maps_to_fields_and_extra(self):
        line = result_line(
            {
                "text/plain": "'quoted'",
                "text/html": "<b>x</b>",
                "image/png": "iVBORw0K\nGgo=\n",
                "application/json": {"a": 1},
                "e2b/chart": {"type": "line"},
                "application/vnd.plotly.v1+json": {"data": []},
            },
            True,
        )
        self.assertEqual(line["type"], "result")
        self.assertTrue(line["is_main_result"])
        self.assertEqual(line["text"], "quoted")  # one pair of wrapping quotes stripped
        self.assertEqual(line["html"], "<b>x</b>")
        self.assertEqual(line["png"], "iVBORw0KGgo=")  # base64 without line breaks
        self.assertEqual(line["json"], {"a": 1})
        self.assertEqual(line["chart"], {"type": "line"})
        self.assertEqual(line["extra"], {"application/vnd.plotly.v1+json": {"data": []}})

    def test_only_one_pair_of_quotes_and_only_matching(self):
        self.assertEqual(result_line({"text/plain": "\"'x'\""}, False)["text"], "'x'")
        self.assertEqual(result_line({"text/plain": "'x\""}, False)["text"], "'x\"")
        self.assertEqual(result_line({"text/plain": "'"}, False)["text"], "'")

    def test_empty_bundle_has_extra(self):
        self.assertEqual(result_line(None, False), {"type": "result", "is_main_result": False, "extra": {}})

    def test_error_line_joins_the_traceback(self):
        self.assertEqual(
            error_line({"ename": "E", "evalue": "v", "traceback": ["a", "b"]}),
            {"type": "error", "name": "E", "value": "v", "traceback": "a\nb"},
        )


class LanguageTest(unittest.TestCase):
    def test_aliases(self):
        self.assertEqual(normalize_language(None), "python")
        self.assertEqual(normalize_language(" JS "), "javascript")
        self.assertEqual(normalize_language("ts"), "typescript")
        self.assertEqual(normalize_language("Bash"), "bash")
        self.assertEqual(normalize_language("r"), "r")


class EnvCodeTest(unittest.TestCase):
    # Values with every quote and newline must arrive as they are: the code is compiled and run,
    # so each is checked by evaluating it.
    VALUES = {"A": "it's \"quoted\" $HOME `x` \\ \n second line", "B": "\u00e9"}

    def test_python_set_save_restore(self):
        import os

        os.environ.pop("A", None)
        os.environ["B"] = "old"
        ns = {}
        exec(env_save_code("python", self.VALUES.keys()) + env_set_code("python", self.VALUES), ns)
        self.assertEqual(os.environ["A"], self.VALUES["A"])
        self.assertEqual(os.environ["B"], "\u00e9")
        exec(env_restore_code("python", self.VALUES.keys()), ns)
        self.assertNotIn("A", os.environ)
        self.assertEqual(os.environ["B"], "old")
        exec(env_set_code("python", {"B": None}), {})
        self.assertNotIn("B", os.environ)

    def test_bash_set_save_restore(self):
        import subprocess

        script = (
            "B=old; export B\n"
            + env_save_code("bash", self.VALUES.keys())
            + env_set_code("bash", self.VALUES)
            + 'printf "%s|%s\\n" "$A" "$B"\n'
            + env_restore_code("bash", self.VALUES.keys())
            + 'printf "%s|%s|%s\\n" "${A-unset}" "$B" "${__moat_had_A-gone}"\n'
        )
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertEqual(out, "%s|%s\nunset|old|gone\n" % (self.VALUES["A"], self.VALUES["B"]))

    def test_javascript_set_save_restore(self):
        import shutil
        import subprocess

        if shutil.which("node") is None:
            self.skipTest("node is not installed")
        script = (
            "process.env.B = 'old';\n"
            + env_save_code("javascript", self.VALUES.keys())
            + env_set_code("javascript", self.VALUES)
            + "const got = [process.env.A, process.env.B];\n"
            + env_restore_code("javascript", self.VALUES.keys())
            + "console.log(JSON.stringify([got, 'A' in process.env, process.env.B]));\n"
        )
        out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.strip(), '[["%s","\u00e9"],false,"old"]' % self.VALUES["A"]
                         .replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))

    def test_names_are_not_interpolated_unchecked(self):
        # The server checks names against ENV_NAME before any of this; values never need it.
        self.assertIn("export A=", env_set_code("bash", {"A": "x"}))


if __name__ == "__main__":
    unittest.main()
