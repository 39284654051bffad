#!/usr/bin/env python3
"""Regenerate firmware/data/common-passwords.txt (run by a developer, never on the box).

Source: the 30,000 most common passwords of the zxcvbn project (MIT licence; drawn from
Mark Burnett's public-domain 10-million-password set), plus passwords common in Korea
(keyboard walks, Hangul typed on a QWERTY keyboard) and this product's own words.
Usage: pip install zxcvbn==4.5.0 && python scripts/common_passwords.py
"""

from __future__ import annotations

from pathlib import Path

from zxcvbn.frequency_lists import FREQUENCY_LISTS

KOREAN = """
qwer1234 qwer1234! 1q2w3e4r 1q2w3e4r! 1q2w3e4r5t 1q2w3e4r5t! 1q2w3e4r5t6y 1qaz2wsx 1qaz2wsx3edc !qaz2wsx
asdf1234 zxcv1234 qwerasdf qwerasdfzxcv a123456789 a1234567 a12345678 aa123456 abcd1234 abcd1234!
qwe123!@# qweasdzxc qweasd123 asd123 zxc123 1234qwer 1234qwer! q1w2e3r4 q1w2e3r4t5 password1! p@ssw0rd
p@ssword1 passw0rd admin1234 admin123! administrator test1234 test1234! guest1234 user1234 welcome1
dkssud dkssudgktpdy tkfkdgo tkfkdgo1 tkfkd rkskek rkskekfk gkgkgk gksrnr gksrnrdj dlrjtdms
saranghae saranghae1 sarang sarang123 annyeong annyeonghaseyo hangul korea1234 seoul1234 daehanminguk
iloveyou1 sky1234 love1234 sunshine1 000000 111111 123123 123456 1234567890 0987654321 12341234
nokbox nokbox123 nokbox1234 nokchwi recorder recorder123 minwon minwonsil tongjang
"""


def main() -> None:
    words = set(FREQUENCY_LISTS["passwords"]) | set(KOREAN.split())
    words = sorted({w.lower() for w in words if len(w) >= 6})
    out = Path(__file__).resolve().parent.parent / "firmware" / "data" / "common-passwords.txt"
    out.write_text("# common and breached passwords, lower case, one a line; see scripts/common_passwords.py\n"
                   + "\n".join(words) + "\n")
    print(f"{out}: {len(words)} passwords")


if __name__ == "__main__":
    main()
