"""The streaming invoice CSV summariser: totals, amount forms, structure tolerance, errors."""

import csv
import io
import pickle
import random

import pytest

from bot.atlas.invoice_csv import (
    InvoiceCsvError,
    InvoiceCsvSummary,
    summarise_invoice_csv,
    summarise_invoice_csv_file,
)

HEADER = (
    "Date,Usage Date,Description,Note,Organization Name,Organization ID,Project,Project ID,"
    "SKU,Region,Cluster,Replica Set,Config Server,Application,Unit,Unit Price,Quantity,"
    "Discount Percent,Amount"
)
PREAMBLE = (
    "Invoice Number,666acb8787ba43606905dcae,\n"
    'Billing Period,"June 1, 2024 - July 1, 2024",\n'
    "Organization Name,Test 2,\n"
    "Organization ID,666acb8787ba43606905dcac,\n"
    "\n"
)
PID = "5f0a1b2c3d4e5f6a7b8c9d0e"


def row(amount, project="Prod", sku="ATLAS_AWS_INSTANCE_M30", cluster="Cluster0", pid=PID):
    return (
        f"06/02/2024,06/01/2024,AWS Instance M30,,Test 2,666acb8787ba43606905dcac,{project},"
        f"{pid},{sku},US_EAST_1,{cluster},,,,server hours,0.54,24,,{amount}"
    )


def summarise(text: str) -> InvoiceCsvSummary:
    """Feed text the way a file opened with newline="" would: lines keeping their ends."""
    return summarise_invoice_csv(io.StringIO(text, newline=""))


def test_the_documented_example():
    s = summarise(PREAMBLE + HEADER + "\n" + row("12.96") + "\n")
    assert s.invoice_number == "666acb8787ba43606905dcae"
    assert s.billing_period == "June 1, 2024 - July 1, 2024"
    assert s.organization_name == "Test 2"
    assert s.organization_id == "666acb8787ba43606905dcac"
    assert s.total_cents == 1296
    assert s.row_count == 1
    assert s.by_project == {"Prod": 1296}
    assert s.by_sku == {"ATLAS_AWS_INSTANCE_M30": 1296}
    assert s.by_cluster == {"Cluster0": 1296}
    assert s.credits_cents == 0


def test_totals_by_project_sku_and_cluster():
    rows = [
        row("12.96"),
        row("3.04", sku="ATLAS_AWS_STORAGE"),
        row("100.00", project="Dev", cluster="Cluster1"),
        row("0.50", project="", pid="aaaaaaaaaaaaaaaaaaaaaaaa", cluster=""),
        row("1.50", project="", pid="", sku=""),
    ]
    s = summarise(PREAMBLE + HEADER + "\n" + "\n".join(rows) + "\n")
    assert s.row_count == 5
    assert s.total_cents == 1296 + 304 + 10000 + 50 + 150
    assert s.by_project == {
        "Prod": 1600,
        "Dev": 10000,
        "aaaaaaaaaaaaaaaaaaaaaaaa": 50,
        "(no project)": 150,
    }
    assert s.by_sku == {"ATLAS_AWS_INSTANCE_M30": 11346, "ATLAS_AWS_STORAGE": 304, "(no sku)": 150}
    assert s.by_cluster == {"Cluster0": 1600 + 150, "Cluster1": 10000, "(no cluster)": 50}
    assert s.top("project", 2) == [("Dev", 10000), ("Prod", 1600)]
    assert s.top("cluster", 10) == [("Cluster1", 10000), ("Cluster0", 1750), ("(no cluster)", 50)]


def test_top_breaks_ties_by_name_and_rejects_unknown_dimensions():
    rows = [row("1.00", sku="B"), row("1.00", sku="A"), row("2.00", sku="C")]
    s = summarise(HEADER + "\n" + "\n".join(rows))
    assert s.top("sku", 3) == [("C", 200), ("A", 100), ("B", 100)]
    assert s.top("by_sku", 1) == [("C", 200)]
    assert s.top("sku", 0) == []
    with pytest.raises(ValueError, match="dimension"):
        s.top("region", 3)


def test_credits_are_the_sum_of_negative_rows():
    rows = [row("100.00"), row("-25.00"), row("-0.50", cluster=""), row("10.00")]
    s = summarise(HEADER + "\n" + "\n".join(rows) + "\n")
    assert s.credits_cents == -2550
    assert s.total_cents == 10000 - 2550 + 1000
    assert s.by_cluster == {"Cluster0": 10000 - 2500 + 1000, "(no cluster)": -50}


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("12.34", 1234),
        ("-50.00", -5000),
        ('"$1,234.56"', 123456),
        ('"-$1,234.56"', -123456),
        ('"$1,234,567.89"', 123456789),
        ("$-5.00", -500),
        ("($12.00)", -1200),
        ('"($1,200.00)"', -120000),
        ("1234.5", 123450),
        ("1234", 123400),
        ("-7", -700),
        ("  12.34  ", 1234),
        (" $ 12.34 ", 1234),
        (".5", 50),
        ("-.12", -12),
        ("0.00", 0),
        ("-0.00", 0),
    ],
)
def test_amount_forms(amount, cents):
    s = summarise(HEADER + "\n" + row(amount) + "\n")
    assert s.total_cents == cents
    assert s.credits_cents == min(cents, 0)
    assert s.row_count == 1


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("0.125", 12),  # half to even: down
        ("0.135", 14),  # half to even: up
        ("0.1251", 13),  # more than half
        ("-0.125", -12),
        ("-0.135", -14),
        ("1.005", 100),
        ("1.015", 102),
        ('"$1,000.0050"', 100000),
        ("12345678901234567890123456789.125", 1234567890123456789012345678912),
    ],
)
def test_more_than_two_decimals_round_half_even(amount, cents):
    assert summarise(HEADER + "\n" + row(amount)).total_cents == cents


@pytest.mark.parametrize(
    "amount",
    [
        "abc",
        "1.2.34",
        "12.3a",
        "$",
        "-$",
        "()",
        "--1.00",
        "(-1.00)",
        '"1,23.00"',
        "1.",
        "12 34",
        "١٢.٣٤",
        "1_000.00",
        "+5.00",
        "5.00-",
        "$$5",
        "(5.00",
    ],
)
def test_bad_amount_names_the_line(amount):
    text = PREAMBLE + HEADER + "\n" + row("1.00") + "\n" + row(amount) + "\n" + row("2.00") + "\n"
    with pytest.raises(InvoiceCsvError) as info:
        summarise(text)
    assert info.value.line == 8
    assert str(info.value).startswith("line 8: Amount ")
    assert "is not a dollar amount" in str(info.value)


def test_bad_amount_line_counts_physical_lines_of_quoted_fields():
    multi = row("1.00").replace("AWS Instance M30", '"two\nlines"')
    text = HEADER + "\n" + multi + "\n" + row("1.00") + "\n" + row("x") + "\n"
    with pytest.raises(InvoiceCsvError) as info:
        summarise(text)
    assert info.value.line == 5
    assert str(info.value) == "line 5: Amount 'x' is not a dollar amount"


def test_blank_amount_counts_as_zero():
    s = summarise(HEADER + "\n" + row("") + "\n" + row("   ") + "\n" + row("1.00") + "\n")
    assert s.row_count == 3
    assert s.total_cents == 100
    assert s.by_project == {"Prod": 100}


def test_blank_lines_anywhere_are_skipped():
    text = (
        "\n\nInvoice Number,INV1,\n\n\nBilling Period,P,\n\n"
        + HEADER
        + "\n\n"
        + row("1.00")
        + "\n\n   \n"
        + ",,,,,,,,,,,,,,,,,,\n"
        + ",,,\n"
        + row("2.00")
        + "\n\n"
    )
    s = summarise(text)
    assert s.invoice_number == "INV1"
    assert s.billing_period == "P"
    assert s.row_count == 2
    assert s.total_cents == 300


def test_byte_order_mark_is_stripped_from_the_first_line():
    s = summarise("\ufeff" + PREAMBLE + HEADER + "\n" + row("1.00") + "\n")
    assert s.invoice_number == "666acb8787ba43606905dcae"
    s = summarise("\ufeff" + HEADER + "\n" + row("1.00") + "\n")
    assert s.total_cents == 100


def test_header_block_is_optional_and_keys_are_matched_loosely():
    s = summarise(HEADER + "\n" + row("4.00") + "\n")
    assert (s.invoice_number, s.billing_period, s.organization_name, s.organization_id) == (
        None,
        None,
        None,
        None,
    )
    assert s.total_cents == 400
    s = summarise("  INVOICE NUMBER ,  INV9  \norganization id,ORG\n" + HEADER + "\n")
    assert s.invoice_number == "INV9"
    assert s.organization_id == "ORG"


def test_columns_are_found_by_name_in_any_order():
    text = (
        " amount ,Cluster,SKU,Organization Name,PROJECT\n"
        '"$1,000.00",C1,S1,Test 2,P1\n'
        "5.00,C2,S1,Test 2,P2\n"
    )
    s = summarise(text)
    assert s.total_cents == 100500
    assert s.by_project == {"P1": 100000, "P2": 500}
    assert s.by_sku == {"S1": 100500}
    assert s.by_cluster == {"C1": 100000, "C2": 500}
    assert s.organization_name is None


def test_optional_columns_missing_go_to_the_no_bucket():
    s = summarise("Description,Amount\nthing,1.00\nother,2.00\n")
    assert s.by_project == {"(no project)": 300}
    assert s.by_sku == {"(no sku)": 300}
    assert s.by_cluster == {"(no cluster)": 300}
    s = summarise("Project ID,Amount\nabc,1.00\n,2.00\n")
    assert s.by_project == {"abc": 100, "(no project)": 200}


def test_quoted_fields_with_commas_and_newlines():
    rows = [
        row("1.00", project='"Prod, EU"'),
        row("2.00", project='"Multi\nline ""quoted"" project"'),
        row('"1,000.00"', project='"Prod, EU"'),
    ]
    s = summarise(PREAMBLE + HEADER + "\n" + "\n".join(rows) + "\n")
    assert s.row_count == 3
    assert s.by_project == {"Prod, EU": 100100, 'Multi\nline "quoted" project': 200}


def test_trailing_empty_column_and_crlf_lines():
    text = (PREAMBLE + HEADER + ",\n" + row("1.00") + "\n" + row("2.00") + ",\n").replace(
        "\n", "\r\n"
    )
    s = summarise(text)
    assert s.invoice_number == "666acb8787ba43606905dcae"
    assert s.total_cents == 300


def test_short_row_names_the_line():
    text = PREAMBLE + HEADER + "\n" + row("1.00") + "\n06/02/2024,06/01/2024,oops\n"
    with pytest.raises(InvoiceCsvError) as info:
        summarise(text)
    assert info.value.line == 8
    assert str(info.value) == "line 8: row has 3 columns, the header has 19"


def test_no_table_header_is_an_error():
    with pytest.raises(InvoiceCsvError, match="no table header with an Amount column found"):
        summarise(PREAMBLE + "Date,Project,Total\n06/01/2024,Prod,1.00\n")
    with pytest.raises(InvoiceCsvError, match="no table header") as info:
        summarise("")
    assert info.value.line == 1
    with pytest.raises(InvoiceCsvError, match="no table header"):
        summarise_invoice_csv([])


def test_key_value_line_is_not_taken_for_the_table_header():
    s = summarise("Organization Name,Amount,\n\nProject,Amount\nP,1.00\n")
    assert s.organization_name == "Amount"
    assert s.by_project == {"P": 100}


def test_header_without_rows_is_an_empty_summary():
    s = summarise(PREAMBLE + HEADER + "\n")
    assert s.total_cents == 0
    assert s.row_count == 0
    assert s.credits_cents == 0
    assert s.by_project == s.by_sku == s.by_cluster == {}
    assert s.top("project", 5) == []


def test_any_iterable_of_lines():
    lines = [HEADER + "\n", row("1.00") + "\n", row("2.00") + "\n"]
    assert summarise_invoice_csv(lines).total_cents == 300
    assert summarise_invoice_csv(iter(lines)).total_cents == 300
    assert summarise_invoice_csv(line for line in lines).total_cents == 300


def test_csv_errors_become_invoice_errors_with_the_line():
    huge = "x" * (csv.field_size_limit() + 1)
    with pytest.raises(InvoiceCsvError, match=r"^line 3: unreadable row: field larger") as info:
        summarise(HEADER + "\n" + row("1.00") + "\n" + row("2.00", project=huge) + "\n")
    assert info.value.line == 3


def test_error_is_a_value_error_and_pickles():
    err = InvoiceCsvError(7, "Amount 'abc' is not a dollar amount")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.line, str(again)) == (7, "line 7: Amount 'abc' is not a dollar amount")


def test_file_helper_reads_utf8_with_bom(tmp_path):
    path = tmp_path / "invoice.csv"
    path.write_text(
        PREAMBLE + HEADER + "\r\n" + row("12.96", project="Prod ü") + "\r\n", encoding="utf-8-sig"
    )
    s = summarise_invoice_csv_file(path)
    assert s.invoice_number == "666acb8787ba43606905dcae"
    assert s.by_project == {"Prod ü": 1296}
    assert summarise_invoice_csv_file(str(path)) == s


def test_large_generated_file_matches_independent_totals(tmp_path):
    rng = random.Random(20240601)
    projects = [f"Project {i}" for i in range(7)]
    skus = [f"ATLAS_SKU_{i}" for i in range(13)]
    clusters = [f"Cluster{i}" for i in range(5)]
    total = credits = 0
    by_project: dict[str, int] = {}
    by_cluster: dict[str, int] = {}
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(PREAMBLE)
        writer = csv.writer(f)
        writer.writerow(next(csv.reader([HEADER])))
        for _ in range(50_000):
            cents = rng.randint(-20_000, 2_000_000)
            project, sku, cluster = rng.choice(projects), rng.choice(skus), rng.choice(clusters)
            total += cents
            credits += min(cents, 0)
            by_project[project] = by_project.get(project, 0) + cents
            by_cluster[cluster] = by_cluster.get(cluster, 0) + cents
            sign = "-" if cents < 0 else ""
            dollars, rest = divmod(abs(cents), 100)
            # Mix the plain form Atlas writes with formatted ones.
            amount = rng.choice(
                [f"{sign}{dollars}.{rest:02d}", f"{sign}${dollars:,}.{rest:02d}"]
                if cents < 0
                else [f"{dollars}.{rest:02d}", f"${dollars:,}.{rest:02d}"]
            )
            cells = ["06/02/2024", "06/01/2024", "x", "", "Test 2", "o", project, PID, sku]
            cells += ["US_EAST_1", cluster, "", "", "", "server hours", "0.54", "24", "", amount]
            writer.writerow(cells)
    s = summarise_invoice_csv_file(path)
    assert s.row_count == 50_000
    assert s.total_cents == total
    assert s.credits_cents == credits
    assert s.by_project == by_project
    assert s.by_cluster == by_cluster
    assert sum(s.by_sku.values()) == total


def test_keys_are_trimmed_and_merged():
    rows = [row("1.00", project=" Prod ", cluster="  "), row("2.00", sku=" ATLAS_AWS_INSTANCE_M30")]
    s = summarise(HEADER + "\n" + "\n".join(rows) + "\n")
    assert s.by_project == {"Prod": 300}
    assert s.by_sku == {"ATLAS_AWS_INSTANCE_M30": 300}
    assert s.by_cluster == {"(no cluster)": 100, "Cluster0": 200}
