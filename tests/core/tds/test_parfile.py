"""The whitelisting interpreter on every example of the tds2el guide, typos included, and on attacks."""

import textwrap

import pytest

from difframe.errors import DataError, UsageError
from difframe.tds import parfile
from difframe.tds.parfile import Variable, parse_parfile, read_parfile


def parse(text):
    return parse_parfile(textwrap.dedent(text), "conf.par")


def test_guide_input_par(caplog):
    values = parse('''\
        conf_file             =  "tds2el.par"
        filter_file           = "filter.edf"
        images_prefix         =  "G19K45/set1_0001p_0"
        images_prefix         =  ".cbf"
        ascii_generators      =  "1~,2(z),2(y)"
        normalisation_file    = "normalisation.dat"
        ''')
    assert values == {"conf_file": "tds2el.par", "filter_file": "filter.edf", "images_prefix": ".cbf",
                      "ascii_generators": "1~,2(z),2(y)", "normalisation_file": "normalisation.dat"}
    # the guide's own typo (prefix twice, postfix meant) is reported with both lines
    assert "line 4: images_prefix assigned again (first at line 3)" in caplog.text


def test_guide_harvest_options_and_if_false_block():
    values = parse('''\
        DeltaQ_max = 0.15
        DeltaQ_min = 0.04
        load_from_file= None
        save_to_file  =  "harvest_spots.h5"
        threshold = 500000.0
        if False:
            collectSpots = [[0,0,-12],[0,1,-8],[2,0,-8],[-4 , 4, 8 ],[-1,0,4],[-1,1,8],[-2,-1,-2],[2,0,-2]  ]
            file_maxima = "tagged_selectedpeaks.p"
        REPLICA_COLLECTION = 0  # default to 0
        ''')
    assert values == {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "load_from_file": None,
                      "save_to_file": "harvest_spots.h5", "threshold": 500000.0, "REPLICA_COLLECTION": 0}


def test_guide_small_snippets():
    assert parse('load_from_file  =  "harvest_spots.h5"\nshow_hkls = True\n') == {
        "load_from_file": "harvest_spots.h5", "show_hkls": True}
    assert parse('centering_file ="harvest_spots.h5"\n') == {"centering_file": "harvest_spots.h5"}
    assert parse('load_from_file= "harvest_spots.h5"\nsave_to_file  =  None\nfitSpots = True\n') == {
        "load_from_file": "harvest_spots.h5", "save_to_file": None, "fitSpots": True}


SIMULATION = '''\
#  Temperature and density
#  just in case
Temperature = 300.0  # Kelvin  330 is the default value
density = 2.71     # g/cc    2.71 is the default value
load_from_file= "harvest_spots.h5"
save_to_file  =  None
fitSpots = True
CGUESS={"A11":  [  254.307231832 , -1000  , 10000]  ,
   "A22":  [  254.307231832 , -1000  , 10000]  ,
   "A33":  [ 144.467519525  , -1000  , 10000]         ,
   "A44":  [ 120.580683913  , -1000  , 10000]         ,
   "A55":  [ 169.691768154  , -1000  , 10000]         ,
   "A66":  [ 169.691768154  , -1000  , 10000]         ,
   "A12":  [ -7.53771283211 , -1000  , 10000]         ,
   "A13":  [ 46.561752961   , -1000  , 10000],
   "A23":  [ 46.561752961   , -1000  , 10000]
testSpot_beta = 0.03
testSpot_Niter = 100
testSpot_N = 128
if True:   # to fit just one spot
    collectSpots = [[-2,-2,1]  ]
    file_maxima = "tagged_newpeaks.p" # or all the spots,
    # The visualisation is not so optimised as the fit of elastic constants
    # and runs on CPUs
'''


def test_guide_simulation_example_missing_brace_then_fixed():
    with pytest.raises(UsageError, match=r"conf.par, line 8: syntax error: '\{' was never closed"):
        parse(SIMULATION)
    fixed = parse(SIMULATION.replace('-1000  , 10000]\ntestSpot', '-1000  , 10000]}\ntestSpot'))
    assert fixed["CGUESS"]["A12"] == [-7.53771283211, -1000, 10000]
    assert len(fixed["CGUESS"]) == 9
    assert fixed["collectSpots"] == [[-2, -2, 1]] and fixed["file_maxima"] == "tagged_newpeaks.p"
    assert fixed["Temperature"] == 300.0 and fixed["density"] == 2.71 and fixed["testSpot_N"] == 128


def test_guide_fit_example():
    text = '''\
        load_from_file= "harvest_spots.h5"
        save_to_file  =  None
        collectSpots = [[-2,-1,-2],[-1,0,4],[0,1,-8] ,[2,0,-2], [-2,-1,-2],  ]
        CGUESS={"A11":  [  254.307231832 , -1000  , 10000]  ,
                "A33":  [ 144.467519525  , -1000  , 10000]         ,
                "A15":  [ 46.561752961   , -1000  , 10000]
        '''
    with pytest.raises(UsageError, match="line 4: syntax error"):
        parse(text)
    values = parse(text + "}\n")
    assert values["collectSpots"][4] == [-2, -1, -2] and set(values["CGUESS"]) == {"A11", "A33", "A15"}


def test_guide_a_variables_default_and_open_intervals():
    values = parse("A_variables = [ minimiser.Variable(0.0,0.0,0.0) for i in range(6+4+2+2) ]  # r1..\n")
    assert values["A_variables"] == [Variable(0.0, 0.0, 0.0)] * 14
    missing_plus = '''\
        A_variables = (
                  [ minimiser.Variable(0.0,-1.0e-1,1.0e-1) for i in range(3) ]
                  [ minimiser.Variable(0.0,-3.0e-2,3.0e-2) for i in range(3) ]
                  + [      minimiser.Variable(0.0,0.0,0.0) for i in range(8)                                              ]
        '''
    with pytest.raises(UsageError, match=r"line 1: syntax error: '\(' was never closed"):
        parse(missing_plus)  # verbatim from the guide: the parenthesis is never closed
    with pytest.raises(UsageError, match=r"line 2: syntax error: invalid syntax. Perhaps you forgot a comma"):
        parse(missing_plus + ")\n")  # the missing '+': two comprehensions side by side
    with pytest.raises(UsageError, match=r"line 1: a list cannot be indexed by a tuple \(is a '\+' missing"):
        parse("x = [1, 2] [0, 1]\n")
    good = parse(missing_plus.replace("range(3) ]\n                  [ minimiser.Variable(0.0,-3",
                                      "range(3) ] +\n                  [ minimiser.Variable(0.0,-3") + ")\n")
    assert len(good["A_variables"]) == 14 and good["A_variables"][0] == Variable(0.0, -0.1, 0.1)
    assert good["A_variables"][4] == Variable(0.0, -0.03, 0.03)


ACTIV = '''\
activ =1*0
A_variables = (
            [ minimiser.Variable(0.0,-1.5*activ1  ,1.5*activ1 ) for i in range(1) ]+  # r1,
            [ minimiser.Variable(0.0,-1.5*activ1 ,1.5*activ1 ) for i in range(1) ]+  # r2
            [ minimiser.Variable(0.0,-1.5*activ1 ,1.5*activ1 ) for i in range(1) ]+  # r3,
            [ minimiser.Variable(0.0,-0.1*activ2 ,0.1*activ2 ) ,-1,   minimiser.Variable(0.0,-0.1*activ2 ,0.1*activ2 )    ]+  #  AA, BB, CC
            [ minimiser.Variable(0.0,-2.0*activ3 ,2.0*activ ) ,
              minimiser.Variable(0.0,-2.0*activ3,2.0*activ3) ,
              minimiser.Variable(0.0,-2.0*activ3,2.0*activ3) ,
              minimiser.Variable(0.0,-2.0*activ3,2.0*activ3) ,
              ]+        # omega, alpha, beta, kappa
                  [         minimiser.Variable(0.0,-0.2*activ,+0.2*activ) for i in range(2)  ] +   #                      d1,d2,
                  [         minimiser.Variable(0.0,-5*activ,+5*activ) for i in range(2)  ]       #       det_origin_X, det_origin_Y'''


def test_guide_activ_example_undefined_name():
    with pytest.raises(UsageError, match=r"line 2: syntax error: '\(' was never closed"):
        parse_parfile(ACTIV, "conf.par")
    with pytest.raises(UsageError, match=r"conf.par, line 3: name 'activ1' is not defined"):
        parse_parfile(ACTIV + "\n)\n", "conf.par")
    values = parse_parfile("activ1 = activ2 = activ3 = 1\n" + ACTIV + "\n)\n", "conf.par")
    a = values["A_variables"]
    assert len(a) == 14 and a[0] == Variable(0.0, -1.5, 1.5) and a[4] == -1  # the guide's stray -1 survives
    assert a[6] == Variable(0.0, -2.0, 0.0) and a[12] == Variable(0.0, 0.0, 0.0)


def test_expressions_and_blocks():
    values = parse('''\
        n = 3
        spots = [[h, 0, 2 * h] for h in range(-n, n + 1) if h != 0]
        big = {"A%d" % 1 if False else "A11": [1.0, 0, 2]} if n > 2 and not False else None
        x = 2 ** 3 - 7 // 2 + abs(-1.5) + float("2") + int(2.9) + min(4, 5) + len(spots)
        x += 1
        if n == 4:
            y = 1
        elif n == 3:
            y = 2
        else:
            y = 3
        pair = (1, 2)[1]
        sq = {k: k * k for k in range(3)}
        last = spots[-1][::2]
        """a docstring"""
        pass
        ''')
    assert values["spots"][0] == [-3, 0, -6] and len(values["spots"]) == 6
    assert values["big"] == {"A11": [1.0, 0, 2]}
    assert values["x"] == 8 - 3 + 1.5 + 2.0 + 2 + 4 + 6 + 1
    assert values["y"] == 2 and values["pair"] == 2 and values["sq"] == {0: 0, 1: 1, 2: 4}
    assert values["last"] == [3, 6]
    assert "h" not in values and "k" not in values


@pytest.mark.parametrize("line, culprit", [
    ("import os", "import is not allowed"),
    ("from os import path", "import is not allowed"),
    ("x = __import__('os')", "'__import__' is not allowed"),
    ("x = open('/etc/passwd')", "calling 'open' is not allowed"),
    ("x = exec('1')", "calling 'exec' is not allowed"),
    ("x = eval('1')", "calling 'eval' is not allowed"),
    ("x = ().__class__", "attribute access '\\(\\).__class__'|attribute access"),
    ("x = 'a'.join(['b'])", "calling \"'a'.join\" is not allowed"),
    ("x = minimiser.os", "attribute access 'minimiser.os'"),
    ("x = lambda: 1", "a lambda is not allowed"),
    ("def f(): pass", "a function definition is not allowed"),
    ("while True: pass", "a while loop is not allowed"),
    ("for i in range(3): pass", "a for loop is not allowed"),
    ("x = f'{1}'", "an f-string is not allowed"),
    ("print(1)", "an expression statement is not allowed"),
    ("x = [0] * 10**9", "at most"),
    ("x = 10 ** 100000", "too large"),
    ("x = range(10**9)", "at most"),
    ("x = '%*d' % (10**9, 1)", "formatting"),
    ("a.b = 1", "only plain names"),
    ("__x = 1", "dunder"),
    ("x = y", "name 'y' is not defined"),
    ("x = range", "can only be called"),
    ("x = minimiser.Variable(5.0, 0.0, 1.0)", "min <= value <= max"),
    ("x = minimiser.Variable('a', 0.0, 1.0)", "must be a number"),
    ("x = [i for i in 5]", "only run over a list"),
    ("x = 1 / 0", "division by zero"),
    ("x = (y := 1)", "assignment expression"),
])
def test_refusals_name_file_and_line(line, culprit):
    with pytest.raises(UsageError, match=r"conf.par, line 2: .*(" + culprit + ")"):
        parse_parfile("ok = 1\n" + line + "\n", "conf.par")


def test_read_parfile_missing(tmp_path):
    with pytest.raises(DataError, match="nothere.par"):
        read_parfile(tmp_path / "nothere.par")
    (tmp_path / "bin.par").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="bin.par"):
        read_parfile(tmp_path / "bin.par")


# -- the budget (issue 10): every probe ends in one UsageError naming file, line and limit ----------------


def refused(text, pattern):
    with pytest.raises(UsageError, match=pattern) as info:
        parse_parfile(text, "conf.par")
    return str(info.value)


def test_integer_growth_is_refused_at_the_line_that_crosses_the_limit():
    refused("a = 9**64\nb = a**64\nc = b**64\n",
            rf"conf.par, line 2: integer power .* too large .*at most {parfile.MAX_INT_BITS} bits")
    # a{k} = 2**(60 * 2**k) has 60 * 2**k + 1 bits; squaring a{k-1} is refused once the factors' bits
    # add up beyond the limit (7 squarings for 4096 bits: line 8)
    squares = "a0 = 2**60\n" + "".join(f"a{k} = a{k - 1} * a{k - 1}\n" for k in range(1, 10))
    first = next(k for k in range(1, 10) if 2 * (60 * 2**(k - 1) + 1) > parfile.MAX_INT_BITS)
    refused(squares, rf"conf.par, line {first + 1}: a product of {2 * (60 * 2**(first - 1) + 1)} bits is too large")
    refused("x = 0x" + "f" * 2000 + "\n", r"line 1: an integer of 8000 bits is too large \(at most 4096\)")
    assert parse_parfile("x = 2**4000 + 1\n")["x"] == 2**4000 + 1


def test_values_count_nested_items_so_str_of_a_huge_structure_never_runs():
    message = refused("a = [0] * 10**6\nb = [a] * 10**6\nc = str(b)\n",
                      rf"conf.par, line 2: .*items.* \(at most {parfile.MAX_ITEMS} allowed\)")
    assert "str" not in message
    refused("a = 'x' * 10**6\nb = a + a\n", r"line 2: the result would hold 2000000 items")
    assert len(parse_parfile("a = [0] * 10**6\nb = len(a)\n")["a"]) == 10**6  # the documented cap is reachable


def test_comprehension_iterations_are_bounded(monkeypatch):
    monkeypatch.setattr(parfile, "MAX_ITERATIONS", 1000)
    refused("x = [0 for i in range(10**6) for j in range(10**6)]\n",
            r"conf.par, line 1: more than 1000 comprehension iterations in one file")
    refused("ok = 1\nx = [i for i in range(600)]\ny = [i for i in range(600)]\n", r"line 3: more than 1000")
    assert parse_parfile("x = [i for i in range(1000)]\n")["x"][-1] == 999


def test_total_operations_are_bounded(monkeypatch):
    monkeypatch.setattr(parfile, "MAX_OPERATIONS", 100_000)
    refused("a = [0] * 10000\nb = [a == list(a) for i in range(1000)]\n",
            r"conf.par, line 2: the file needs more than 100000 operations")


def test_literal_items_are_capped_before_evaluation(monkeypatch):
    monkeypatch.setattr(parfile, "MAX_ITEMS", 1000)
    refused("x = [" + "0, " * 2000 + "]\n", r"line 1: the result would hold 2000 items \(at most 1000 allowed\)")
    refused("x = {" + "".join(f"{i}: 0, " for i in range(1001)) + "}\n", r"line 1: .*1001 items")


@pytest.mark.parametrize("expression", ["-" * 100_000 + "1", "not " * 50_000 + "1", "1+" * 20_000 + "1",
                                        "[" * 150 + "]" * 150, "abs(" * 120 + "1" + ")" * 120])
def test_deep_nesting_is_a_clear_message_not_a_memory_error(expression):
    refused(f"ok = 1\nx = {expression}\n",
            rf"conf.par, line 2: expression nested too deeply \(at most {parfile.MAX_DEPTH} levels\)")


def test_file_size_and_line_count(tmp_path):
    refused("x = 1\n" * 10**6, rf"line \d+: the file is 6000000 bytes or more, more than the {parfile.MAX_FILE_BYTES}")
    refused("x = [" + "0," * 2_000_000 + "]\n", rf"line 1: .* more than the {parfile.MAX_FILE_BYTES}")
    refused("\n" * parfile.MAX_LINES + "x = 1\n", rf"line {parfile.MAX_LINES + 1}: more than {parfile.MAX_LINES} lines")
    big = tmp_path / "big.par"
    big.write_bytes(b"# padding\n" * (parfile.MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(UsageError, match=r"big.par, line 100001: the file is more than 1000000 bytes"):
        read_parfile(big)


def test_special_files_are_refused_without_blocking(tmp_path):
    import os
    import threading

    fifo = tmp_path / "conf.par"
    os.mkfifo(fifo)
    box = {}
    thread = threading.Thread(target=lambda: box.update(error=pytest.raises(DataError, read_parfile, fifo)),
                              daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "reading a FIFO as a parameter file hangs"
    assert "conf.par is not a regular file" in str(box["error"].value)
    if os.path.exists("/dev/zero"):
        with pytest.raises(DataError, match="/dev/zero is not a regular file"):
            read_parfile("/dev/zero")


SECRET = "root:x:0:0:SECRET-7f3a:/root:/bin/bash"


@pytest.mark.parametrize("content", [
    SECRET + "\nbin:x:1:1::/:/usr/sbin/nologin\n",  # /etc/passwd-like: line 1 does not parse
    "API_KEY=SECRET-7f3a extra\n",  # .env-like: a syntax error on line 1
    "x = 1\ny = SECRET-7f3a with spaces\n",  # a syntax error after a valid line
    "x = '''SECRET-7f3a\n",  # an unterminated string
    "x = 1 \u2192 SECRET-7f3a\n",  # an invalid character
    "-----BEGIN KEY-----\nSECRET-7f3a\n",
])
def test_errors_never_quote_a_file_that_did_not_parse(tmp_path, content):
    (tmp_path / "secret").write_text(content)
    with pytest.raises(UsageError, match=r"secret, line \d+: syntax error") as info:
        read_parfile(tmp_path / "secret")
    assert "SECRET" not in str(info.value) and "\u2192" not in str(info.value) and "KEY" not in str(info.value)


def test_conf_file_naming_etc_passwd_does_not_echo_it(tmp_path):
    from pathlib import Path

    from difframe.tds.config import read_tds_config

    (tmp_path / "input.par").write_text("conf_file = '/etc/passwd'\n")
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    first = passwd.read_text().splitlines()[0]
    with pytest.raises(UsageError, match=r"/etc/passwd, line 1: syntax error") as info:
        read_tds_config(tmp_path / "input.par")
    assert first not in str(info.value) and first.split(":")[0] + ":" not in str(info.value)


def test_values_nested_by_repeated_assignment_are_refused():
    """Each line is shallow, the value is not: a[k] = [a[k-1]] nests one level per line."""
    text = "a = 0\n" + "a = [a]\n" * 150
    refused(text, rf"conf.par, line {parfile.MAX_DEPTH + 2}: a value nested {parfile.MAX_DEPTH + 1} deep is too deep")
    assert parse_parfile("a = 0\n" + "a = [a]\n" * parfile.MAX_DEPTH)["a"] is not None


def test_byte_order_mark_and_binary_files(tmp_path):
    bom = tmp_path / "windows.par"
    bom.write_bytes("\ufeffthreshold = 5\r\n".encode("utf-8"))
    assert read_parfile(bom) == {"threshold": 5}
    image = tmp_path / "image.par"
    image.write_bytes(b"x = 1\ny = 2\n\x89PNG\r\n\x1a\n\xff\xd8")
    with pytest.raises(DataError, match=r"image.par: it is not UTF-8 text \(line 3\)$"):
        read_parfile(image)
    nul = tmp_path / "nul.par"
    nul.write_bytes(b"x = 1\n\x00\x00")
    with pytest.raises(UsageError, match=r"nul.par, line 2: a NUL byte; a parameter file is text$"):
        read_parfile(nul)
