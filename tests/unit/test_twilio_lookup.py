"""`reconciler.twilio.NumberLookup`: one GET of the account's IncomingPhoneNumbers filtered by
the number, an exact match required, bounded, and every failure one masked line."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from reconciler.twilio import NumberLookup, TwilioRefused, TwilioUnavailable, numbers_url

SID = "AC" + "f" * 32
TOKEN = "tok-SECRET-0123456789"
NUMBER = "+14155550100"
BASE = "https://twilio.test"


def lookup(handler: Callable[[httpx.Request], httpx.Response]) -> NumberLookup:
    return NumberLookup(httpx.Client(transport=httpx.MockTransport(handler)), BASE)


def listing(*numbers: str) -> httpx.Response:
    return httpx.Response(
        200, json={"incoming_phone_numbers": [{"phone_number": n} for n in numbers], "page": 0}
    )


def test_one_get_with_the_number_and_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return listing(NUMBER)

    assert lookup(handler).owned(SID, TOKEN, NUMBER) is True
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url).split("?")[0] == numbers_url(BASE, SID)
    assert request.url.params["PhoneNumber"] == NUMBER
    assert request.headers["authorization"] == httpx.BasicAuth(SID, TOKEN)._auth_header


@pytest.mark.parametrize(
    "numbers", [(), ("+141555501009",), ("+14155550101",)], ids=["none", "longer", "other"]
)
def test_only_an_exact_match_is_the_accounts(numbers: tuple[str, ...]) -> None:
    # Twilio's PhoneNumber filter also lists numbers that merely contain the one asked for
    assert lookup(lambda _: listing(*numbers)).owned(SID, TOKEN, NUMBER) is False


def test_a_refusal_is_one_masked_line() -> None:
    body = {
        "code": 20404,
        "message": f"The requested resource /2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json "
        f"was not found (token {TOKEN})",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    with pytest.raises(TwilioRefused) as refused:
        lookup(lambda _: httpx.Response(404, json=body)).owned(SID, TOKEN, NUMBER)
    text = str(refused.value)
    assert text.startswith("Twilio answered 404 The requested resource")
    assert SID not in text and TOKEN not in text and "\n" not in text
    assert "(error 20404)" in text


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (httpx.Response(503, text="upstream\nbroken " + SID), "Twilio answered 503 upstream"),
        (httpx.Response(429, json={"message": "Too Many Requests", "code": 20429}), "429"),
        (httpx.Response(302, headers={"location": "https://elsewhere"}), "302"),
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json={"page": 0}), "not a list of numbers"),
        (httpx.Response(200, content=b"[" * 2_000_000), "over 1 MiB"),
    ],
)
def test_no_listing_is_no_verdict(answer: httpx.Response, said: str) -> None:
    with pytest.raises(TwilioUnavailable) as unavailable:
        lookup(lambda _: answer).owned(SID, TOKEN, NUMBER)
    text = str(unavailable.value)
    assert said in text and SID not in text and "\n" not in text


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (httpx.ReadTimeout("slow " + SID), "timed out after 10 s"),
        (httpx.ConnectError("refused " + SID), "cannot be reached"),
        (httpx.RemoteProtocolError("bad " + SID), "RemoteProtocolError"),
    ],
)
def test_no_answer_is_no_verdict(error: Exception, said: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TwilioUnavailable) as unavailable:
        lookup(handler).owned(SID, TOKEN, NUMBER)
    assert said in str(unavailable.value) and SID not in str(unavailable.value)


def test_json_error_with_secret_keys_is_masked() -> None:
    body = json.dumps({"message": "bad", "auth_token": TOKEN, "account_sid": SID})
    with pytest.raises(TwilioRefused) as refused:
        lookup(lambda _: httpx.Response(401, text=body)).owned(SID, TOKEN, NUMBER)
    assert TOKEN not in str(refused.value) and SID not in str(refused.value)
