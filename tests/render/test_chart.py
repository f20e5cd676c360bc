"""The digest chart: a PNG of a sane size, drawn headless without pyplot."""

import os
import struct
import subprocess
import sys
from datetime import date
from decimal import Decimal

from bot.atlas import CostResult, CostRow
from bot.render.chart import HEIGHT_PX, WIDTH_PX, digest_chart_png
from bot.render.digests import summarise_digest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADFUL = {"DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"}
ORG = "5f0c0c0c0c0c0c0c0c0c0c0c"


def _summary(rows):
    result = CostResult(rows=tuple(CostRow.model_validate(r) for r in rows))
    return summarise_digest(result, org_id=ORG, month=date(2026, 10, 1))


def _size(png: bytes) -> tuple[int, int]:
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def _rows(months: int, services: tuple[str, ...] = ("Clusters", "Backup")):
    return [
        {
            "usageDate": date(2026 - (12 - m) // 12, (m - 1) % 12 + 1, 1).isoformat(),
            "usageAmount": Decimal(f"{1000 + 37 * m * (i + 1)}.25"),
            "service": service,
            "organizationName": "Acme",
        }
        for m in range(11 - months, 11)
        for i, service in enumerate(services)
    ]


def test_png_of_about_800_by_450_with_services_and_many_months():
    png = digest_chart_png(_summary(_rows(13, ("Clusters", "Backup", "A" * 60))))
    assert png.startswith(PNG_SIGNATURE)
    width, height = _size(png)
    # constrained layout may not change the canvas; allow a few pixels of rounding.
    assert abs(width - WIDTH_PX) <= 2 and abs(height - HEIGHT_PX) <= 2
    assert 5_000 < len(png) < 500_000


def test_one_month_and_no_services():
    rows = [{"usageDate": "2026-10-01", "usageAmount": Decimal("12.34")}]
    summary = _summary(rows)
    assert summary.services == ()
    png = digest_chart_png(summary)
    assert png.startswith(PNG_SIGNATURE)
    assert _size(png)[0] > 0


def test_credits_and_an_empty_result_draw():
    credits = [{"usageDate": "2026-09-01", "usageAmount": Decimal("-5.00"), "service": "Credit"}]
    assert digest_chart_png(_summary(credits)).startswith(PNG_SIGNATURE)
    assert digest_chart_png(_summary([])).startswith(PNG_SIGNATURE)


def test_same_input_same_bytes_and_no_software_stamp():
    summary = _summary(_rows(3))
    first = digest_chart_png(summary)
    assert first == digest_chart_png(summary)
    assert b"matplotlib" not in first.lower()
    assert first != digest_chart_png(_summary(_rows(4)))


def test_drawing_neither_imports_pyplot_nor_needs_a_display():
    # A fresh interpreter: this test process may have imported pyplot elsewhere.
    script = (
        "import sys\n"
        "from datetime import date\n"
        "import bot.render.chart as chart\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported with the module'\n"
        "from bot.render.digests import DigestSummary, Mover\n"
        "s = DigestSummary(org_id='o', org_name=None, month=date(2026, 10, 1),\n"
        "    previous_month=date(2026, 9, 1), total_cents=100, previous_cents=50,\n"
        "    change_cents=50, change_percent=None, services=(Mover('x', 100, 50),),\n"
        "    projects=(), month_to_date_cents=None,\n"
        "    daily_or_monthly=(('2026-09', 50), ('2026-10', 100)))\n"
        "png = chart.digest_chart_png(s)\n"
        "assert png[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in HEADFUL}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
