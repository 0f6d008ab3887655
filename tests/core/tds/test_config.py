"""input.par + conf_file -> the tds subtree: precedence, paths, conversions, checks naming the culprit."""

import pytest

from difframe.errors import DataError, ParameterError, UsageError
from difframe.params import ParamTree
from difframe.tds.config import read_tds_config

CONF = """\
lmbda = 0.7
dist = 200.0
pixel_size = 0.172
det_origin_X = 1200.5
det_origin_Y = 1250.0
AA = BB = 4.99
CC = 17.06
aCC = 120.0
angular_step = 0.1
orientation_codes = 3   # alignment-only: dropped with a warning
DeltaQ_max = 0.15
threshold = 100000.0
fitSpots = 1
show_hkls = 0
DO_ELASTIC = True
A_variables = [ minimiser.Variable(0.0,0.0,0.0) for i in range(6+4+2+2) ]
CGUESS = {"A11": [137.0, -1000, 10000], "A14": [-20.0, -1000, 10000]}
"""
INPUT = """\
conf_file = "conf/tds2el.par"
filter_file = "filter.edf"
images_prefix = "frames/set1_"
images_postfix = ".cbf"
ascii_generators = "1~,3(z),2(x)"
normalisation_file = "normalisation.dat"
threshold = 200000.0
"""


def write(tmp_path, conf=CONF, main=INPUT):
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "tds2el.par").write_text(conf)
    (tmp_path / "input.par").write_text(main)
    return tmp_path / "input.par"


def test_merge_paths_and_conversions(tmp_path, caplog):
    tds = read_tds_config(write(tmp_path))
    assert tds["threshold"] == 200000.0  # input.par wins over conf_file
    assert "sets threshold = 200000.0 over 100000.0" in caplog.text
    assert "orientation_codes" in caplog.text and "orientation_codes" not in tds
    assert tds["conf_file"] == str(tmp_path / "conf" / "tds2el.par")
    assert tds["images_prefix"] == str(tmp_path / "frames" / "set1_")
    assert tds["output_directory"] == str(tmp_path)
    assert tds["fitSpots"] is True and tds["show_hkls"] is False and tds["DO_ELASTIC"] == 1
    assert tds["A_variables"] == [[0.0, 0.0, 0.0]] * 14
    assert tds["geometry"]["BB"] == 4.99 and tds["geometry"]["aCC"] == 120.0
    resolved = ParamTree.build().resolve({"tds": tds}).tds
    assert resolved.geometry.CC == 17.06 and resolved.geometry.alpha == 50.0 and resolved.nred == 1


def test_cguess_outside_the_symmetry_is_named(tmp_path):
    conf = CONF.replace('"A14": [-20.0', '"A15": [-20.0')
    with pytest.raises(UsageError, match=r"tds2el.par: CGUESS names A15, which the symmetry '1~,3\(z\),2\(x\)' "
                                         "forces to zero"):
        read_tds_config(write(tmp_path, conf=conf))
    conf = CONF.replace('"A14": [-20.0', '"A22": [-20.0')
    with pytest.raises(UsageError, match="A22, which is not free.*C22 = C11"):
        read_tds_config(write(tmp_path, conf=conf))
    conf = CONF.replace('"A14": [-20.0, -1000, 10000]', '"A14": [-20.0, 0, 10]')
    with pytest.raises(UsageError, match=r"CGUESS\['A14'\]: value -20.0 lies outside"):
        read_tds_config(write(tmp_path, conf=conf))


def test_a_variables_errors_name_the_entry(tmp_path):
    conf = CONF.replace("range(6+4+2+2) ]", "range(6) ] + [-1] + [minimiser.Variable(0,0,0) for i in range(7)]")
    with pytest.raises(UsageError, match="A_variables entry for omega is -1"):
        read_tds_config(write(tmp_path, conf=conf))
    conf = CONF.replace("range(6+4+2+2)", "range(12)")
    with pytest.raises(UsageError, match="A_variables has 12 entries, expected 14"):
        read_tds_config(write(tmp_path, conf=conf))


def test_bad_values_are_caught_by_the_tree_and_missing_conf_by_name(tmp_path):
    tds = read_tds_config(write(tmp_path, conf=CONF.replace("DeltaQ_max = 0.15", "DeltaQ_max = -1")))
    with pytest.raises(ParameterError, match="tds.DeltaQ_max = -1"):
        ParamTree.build().resolve({"tds": tds})
    with pytest.raises(DataError, match="nothere.par"):
        read_tds_config(write(tmp_path, main=INPUT.replace("conf/tds2el.par", "nothere.par")))
    with pytest.raises(UsageError, match=r"tds2el.par, line 2: calling 'open'"):
        read_tds_config(write(tmp_path, conf="lmbda = 0.7\nx = open('/etc/passwd')\n"))


@pytest.mark.parametrize("typo, option", [("images_prefx", "images_prefix"), ("treshold", "threshold"),
                                          ("fitspots", "fitSpots"), ("DeltaQmax", "DeltaQ_max"),
                                          ("lmbd", "lmbda"), ("aa", "AA"), ("CGESS", "CGUESS")])
def test_a_typo_of_an_option_in_input_par_is_an_error_with_did_you_mean(tmp_path, typo, option):
    main = INPUT.replace("threshold = 200000.0", f"threshold = 200000.0\n{typo} = 1")
    message = rf"input.par, line 8: '{typo}' is not a tds option; did you mean '{option}'\?"
    with pytest.raises(UsageError, match=message):
        read_tds_config(write(tmp_path, main=main))


def test_helper_names_far_from_every_option_stay_warnings(tmp_path, caplog):
    main = INPUT + "activ1 = 1\nr4 = 2\nspots_wanted = 3\nn = 4\n"
    tds = read_tds_config(write(tmp_path, main=main))
    assert tds["threshold"] == 200000.0
    for name in ("activ1", "r4", "spots_wanted", "n"):
        assert name in caplog.text and name not in tds


def test_messages_and_warnings_show_large_values_cut(tmp_path, caplog):
    conf = CONF.replace('CGUESS = {"A11": [137.0, -1000, 10000], "A14": [-20.0, -1000, 10000]}', "CGUESS = [0] * 10**5")
    with pytest.raises(UsageError, match=r"CGUESS must be a dict .*got <a list of 100000 items>$"):
        read_tds_config(write(tmp_path, conf=conf))
    helpers = "".join(f"helper_variable_{i:03d}_{'x' * 60} = {i}\n" for i in range(30))
    read_tds_config(write(tmp_path, main=INPUT + helpers))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored"))
    # orientation_codes (from the conf_file) and 30 helpers: 20 names shown, 11 counted
    assert line.endswith(" and 11 more") and "helper_variable_018_" in line and "helper_variable_019_" not in line
    assert len(line) < 20 * 50 + 100
