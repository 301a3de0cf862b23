"""Which consumer a parked message goes back to: the one that parked it, or, once that one
has been renamed, the service's one consumer of the same event; none when it is ambiguous."""

from __future__ import annotations

from serviceloop.consumer import consumes, parked_consumer


class Copies:
    name = "copies"

    @consumes("orders", "customer_registered")
    def copy_customer(self, envelope) -> None:  # noqa: ANN001
        pass

    @consumes("orders", "order_cancelled")
    def note_cancellation(self, envelope) -> None:  # noqa: ANN001
        pass

    @consumes("orders", "order_cancelled")
    def count_cancellation(self, envelope) -> None:  # noqa: ANN001
        pass


def test_a_consumer_that_still_exists_gets_it_back():
    consumer, handler = parked_consumer(Copies(), "copies.note_cancellation", "orders",
                                        "order_cancelled")
    assert (consumer, handler) == ("copies.note_cancellation",
                                   Copies.note_cancellation.handler)


def test_a_renamed_consumer_gets_it_under_its_new_name():
    consumer, handler = parked_consumer(Copies(), "copies.copy_customer_v1", "orders",
                                        "customer_registered")
    assert (consumer, handler) == ("copies.copy_customer", Copies.copy_customer.handler)


def test_a_method_of_that_name_consuming_something_else_is_not_taken_for_it():
    consumer, _ = parked_consumer(Copies(), "copies.note_cancellation", "orders",
                                  "customer_registered")
    assert consumer == "copies.copy_customer"


def test_no_consumer_of_the_event_or_two_to_choose_from_leaves_it_to_an_operator():
    assert parked_consumer(Copies(), "copies.gone", "callback", "customer_registered") is None
    assert parked_consumer(Copies(), "copies.gone", "orders", "order_cancelled") is None
