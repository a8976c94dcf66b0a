"""Progress bars: redraws in a terminal, one final line in a file or a pipe."""

import io

from creditlab.progress import FinalLineBar, bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, steps: int = 50) -> str:
    b = bar(total=steps, desc="epoch 1/3", unit="batch", file=stream, mininterval=0)
    for _ in range(steps):
        b.update(1)
        b.set_postfix(loss=0.25)
    b.close()
    return stream.getvalue()


def test_off_a_terminal_a_bar_writes_one_final_line():
    text = run(io.StringIO())
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\r" not in text
    assert "epoch 1/3" in text and "50/50" in text and "loss=0.25" in text


def test_in_a_terminal_a_bar_redraws_in_place():
    stream = Terminal()
    assert not isinstance(bar(total=1, file=stream), FinalLineBar)
    assert run(stream).count("\r") > 1


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    with bar(total=3, file=stream, disable=True) as b:
        b.update(3)
    assert stream.getvalue() == ""
