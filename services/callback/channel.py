"""The automatic callback channel: an HTTP adapter to an SMS/IVR provider (with `requests`).

The provider API it speaks (the stand-in in serviceloop/standin_provider.py implements it):

    POST {PROVIDER_URL}/messages   {"to", "text", "reference", "callback_url"}
         header Idempotency-Key (the same key never sends twice), Authorization: Bearer TOKEN
         → 200/201 {"message_id"}
    later the provider POSTs the customer's reply to callback_url:
         {"message_id", "reply"} with header X-Provider-Token: TOKEN
"""

from __future__ import annotations

import requests

from contracts.errors import ServiceUnavailable


class ChannelError(ServiceUnavailable):
    code = "channel_unavailable"


class SmsChannel:
    def __init__(self, base_url: str, token: str, callback_url: str, *,
                 timeout: float = 5.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.callback_url = callback_url
        self.timeout = timeout
        self.session = session or requests.Session()

    def send(self, *, phone: str, text: str, reference: str, idempotency_key: str) -> str:
        """Ask the provider to send `text` to `phone`; returns the provider's message id."""
        try:
            response = self.session.post(
                f"{self.base_url}/messages", timeout=self.timeout,
                json={"to": phone, "text": text, "reference": reference,
                      "callback_url": self.callback_url},
                headers={"Idempotency-Key": idempotency_key,
                         "Authorization": f"Bearer {self.token}"})
        except requests.RequestException as error:
            raise ChannelError(f"the SMS provider is unreachable: {error}") from None
        if response.status_code not in (200, 201):
            raise ChannelError(f"the SMS provider answered {response.status_code}",
                               {"provider": [response.text[:200]]})
        try:
            return str(response.json()["message_id"])
        except (ValueError, KeyError, TypeError):
            raise ChannelError("the SMS provider's answer has no message_id") from None


_KIND = {"install": "安装", "repair": "维修", "maintenance": "保养"}


def confirmation_text(order_type: str, work_done: str) -> str:
    """What the customer reads: "1" confirms; "2" (a problem) has a person call them back
    (domain.auto_reply); anything else counts as no answer and is asked again."""
    kind = _KIND.get(order_type, "服务")
    return (f"【售后回访】师傅已完成您的{kind}（{work_done[:40]}）。确认请回复1；"
            f"如有问题请回复2，客服将致电您。")
