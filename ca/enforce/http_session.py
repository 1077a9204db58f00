"""One HTTP/1.1 connection through the enforcer: requests rewritten, responses followed (pure code).

Ties `RequestStream` (client to application) and `ResponseTracker` (application
to client) together and says what the connection must do next: bytes released
for the application (held requests after a refused Upgrade, or the tunnel
after an accepted one), an error response for the client (sent only once every
earlier request has had its response, so it cannot interleave with them), and
whether the connection ends once everything queued is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ca.enforce.http1 import (
    Exchanges,
    HttpError,
    Pieces,
    RequestStream,
    ResponseTracker,
    error_response,
)


@dataclass
class Actions:
    to_app: Pieces = field(default_factory=list)
    to_client: Pieces = field(default_factory=list)
    finish: bool = False  # close once everything queued has been sent


class HttpSession:
    def __init__(self, xfcc_line: bytes | None) -> None:
        self.exchanges = Exchanges()
        self.requests = RequestStream(self.exchanges, xfcc_line)
        self.responses = ResponseTracker(self.exchanges)
        self.refusal: HttpError | None = None  # the request refused with an answer (or a close)
        self._actions = Actions()
        self._app_closed = False

    @property
    def client_wants_input(self) -> bool:
        return not self._actions.finish and self.requests.wants_input

    @property
    def finishing(self) -> bool:
        return self._actions.finish

    def from_client(self, data: memoryview) -> Pieces:
        pieces = self.requests.feed(data)
        self._settle()
        return pieces

    def from_app(self, data: memoryview) -> Pieces:
        self.responses.feed(data)
        self._settle()
        return [data]

    def app_closed(self) -> None:
        self._app_closed = True
        self._settle()

    def take(self) -> Actions:
        """What to do now; the queues are emptied (the finish flag stays)."""
        actions = self._actions
        self._actions = Actions(finish=actions.finish)
        return actions

    def _settle(self) -> None:
        responses, requests, actions = self.responses, self.requests, self._actions
        if responses.switched and not requests.is_tunnel:
            actions.to_app += requests.tunnel()
        while responses.refused_switch:
            responses.refused_switch = False
            actions.to_app += requests.resume()
        if responses.close_after or responses.lost:
            actions.finish = True
        error = requests.error
        if error is not None and self.refusal is None:
            if responses.idle:
                self.refusal = error
                actions.to_client.append(error_response(error))
                actions.finish = True
            elif self._app_closed:
                self.refusal = error
                actions.finish = True  # mid-response: an error answer would read as part of it
