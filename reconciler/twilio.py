"""Twilio's REST API as the reconciler reads it: the one home of its endpoints, for every layer
(`providers.verify` checks a credential with `account_url`; the controller asks whether a number
is the org's before importing it, `number_owned`). Read-only: nothing here ever writes to Twilio.

- `GET {base}/2010-04-01/Accounts/{AccountSid}.json`: the account (credential verification);
- `GET {base}/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json?PhoneNumber={E.164}`:
  the account's numbers matching that number (`{"incoming_phone_numbers": [{"phone_number",
  ...}], ...}`), HTTP basic auth AccountSid:AuthToken
  (https://www.twilio.com/docs/phone-numbers/api/incomingphonenumber-resource#read-multiple-incomingphonenumber-resources).

The account SID is a credential field: it never appears in a message (`SENSITIVE` in its place),
and httpx's request log shows it masked (`mask_account_in_logs`). Loads httpx, `bounded` and
`redact` only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from reconciler.bounded import ACCEPT_ENCODING, UndecodableAnswer, read_at_most
from reconciler.redact import SENSITIVE, printable, redact_text, redact_tree

API = "https://api.twilio.com"
"""Twilio's REST API (RECONCILER_TWILIO_BASE_URL, or the emulator's stub in a local trial)."""
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
"""One exchange, from connecting to the last byte of the answer read."""
BODY_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024
MESSAGE_LIMIT = 200


def account_url(base: str, sid: str) -> str:
    """Fetch an Account resource: https://www.twilio.com/docs/iam/api/account"""
    return f"{base.rstrip('/')}/2010-04-01/Accounts/{quote(sid, safe='')}.json"


def numbers_url(base: str, sid: str) -> str:
    """Read IncomingPhoneNumber resources of an account (filtered with `PhoneNumber`)."""
    return f"{base.rstrip('/')}/2010-04-01/Accounts/{quote(sid, safe='')}/IncomingPhoneNumbers.json"


_ACCOUNT_IN_PATH = re.compile(r"(/Accounts/)[^/?#]+")


def mask_account(text: str) -> str:
    """`text` with the account SID of any Twilio URL path in it masked."""
    return _ACCOUNT_IN_PATH.sub(rf"\1{SENSITIVE}", text)


class _MaskAccountSids(logging.Filter):
    """httpx logs each request's URL at INFO (off under the CLI and `serve`, but anyone may
    turn it on); a Twilio URL carries the account SID, a credential field: shown masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                mask_account(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


_SID_FILTER = _MaskAccountSids()


def mask_account_in_logs() -> None:
    """Installs (once) the filter that masks account SIDs in httpx's request log."""
    httpx_log = logging.getLogger("httpx")
    if _SID_FILTER not in httpx_log.filters:
        httpx_log.addFilter(_SID_FILTER)


class TwilioUnavailable(Exception):
    """No verdict from Twilio (5xx, 429, a timeout, no connection, an answer that is not its
    documented JSON): one line, masked; asking again later may work."""


class TwilioRefused(Exception):
    """Twilio answered and refused the read (4xx: the credentials, most often): one line,
    masked."""


@dataclass(frozen=True)
class NumberLookup:
    """Where Twilio is reached and with which HTTP client (no redirects followed: the
    credentials go only to this host)."""

    http: httpx.Client
    base: str = API
    clock: Callable[[], float] = time.monotonic

    def owned(self, sid: str, token: str, number: str) -> bool:
        """Whether `number` (E.164) is one of the account `sid`'s incoming numbers: one GET,
        the listing filtered by that number, an exact `phone_number` match required (Twilio's
        filter also matches numbers that merely contain it). Raises `TwilioUnavailable` or
        `TwilioRefused` (masked, one line) when Twilio gives no listing."""
        mask_account_in_logs()
        known = [sid, token]
        status, body, cut = self._get(
            numbers_url(self.base, sid), {"PhoneNumber": number}, sid, token
        )
        if not 200 <= status < 300:
            text = f"Twilio answered {status} {_message(body, cut, status, known)}"
            if 400 <= status < 500 and status != 429:
                raise TwilioRefused(_line(text, known))
            raise TwilioUnavailable(_line(text, known))  # 429, 5xx, a redirect: no verdict
        if cut:
            raise TwilioUnavailable(f"Twilio answered {status} with a body over 1 MiB")
        try:
            listing = json.loads(body.decode("utf-8-sig"))
        except (ValueError, RecursionError):
            raise TwilioUnavailable(
                f"Twilio answered {status} with a body that is not JSON"
            ) from None
        numbers = listing.get("incoming_phone_numbers") if isinstance(listing, dict) else None
        if not isinstance(numbers, list):
            raise TwilioUnavailable(f"Twilio answered {status} but not a list of numbers")
        return any(isinstance(n, dict) and n.get("phone_number") == number for n in numbers)

    def _get(
        self, url: str, params: dict[str, str], sid: str, token: str
    ) -> tuple[int, bytes, bool]:
        deadline = self.clock() + CALL_TIMEOUT_S
        try:
            with self.http.stream(
                "GET",
                url,
                params=params,
                auth=(sid, token),
                headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
                timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                follow_redirects=False,
            ) as resp:
                limit = BODY_BYTES if resp.is_success else ERROR_BODY_BYTES

                def in_time() -> None:
                    if self.clock() > deadline:  # a body trickling in: bounded all the same
                        raise httpx.ReadTimeout("the answer took too long")

                body, cut = read_at_most(resp, limit, each=in_time)
                return resp.status_code, body, cut
        except UndecodableAnswer:
            raise TwilioUnavailable("Twilio's answer could not be decoded") from None
        except httpx.TimeoutException:
            raise TwilioUnavailable(f"Twilio timed out after {CALL_TIMEOUT_S:g} s") from None
        except httpx.ConnectError:
            raise TwilioUnavailable("Twilio cannot be reached (no connection)") from None
        except httpx.HTTPError as exc:  # never str(exc): it may quote the URL
            raise TwilioUnavailable(f"Twilio's answer failed ({type(exc).__name__})") from None


def _message(body: bytes, cut: bool, status: int, known: list[str]) -> str:
    """Twilio's error message (`{"code", "message", "more_info", "status"}`), masked."""
    if cut:
        return f"(a body over {ERROR_BODY_BYTES // 1024} KiB, not shown)"
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        parsed = redact_tree(parsed)
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            code = parsed.get("code")
            text = parsed["message"] + (f" (error {code})" if isinstance(code, int) else "")
        else:
            text = json.dumps(parsed, ensure_ascii=False)
    text = " ".join(text.split())
    return text or (httpx.codes.get_reason_phrase(status) or "(no message)")


def _line(text: str, known: list[str]) -> str:
    return printable(mask_account(redact_text(text, known=known)), MESSAGE_LIMIT)
