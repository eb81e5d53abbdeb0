"""The US state of a NANP area code, from the geocoding data of the `phonenumbers` package
(Google's libphonenumber data), cached per area code by the instance that asks."""

from __future__ import annotations

import re

_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA",
    "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Washington D.C.": "DC", "District of Columbia": "DC",
}
_CITY_STATE = re.compile(r",\s*([A-Z]{2})$")


def state_of_description(description: str) -> str | None:
    """"San Francisco, CA" -> CA; "California" -> CA; anything else -> None."""
    m = _CITY_STATE.search(description)
    if m:
        return m.group(1)
    return _STATES.get(description.strip())


def _lookup(npa: str) -> str | None:
    try:
        import phonenumbers
        from phonenumbers import geocoder
    except ImportError:
        return None
    try:
        number = phonenumbers.parse(f"+1{npa}5550100")
    except phonenumbers.NumberParseException:
        return None
    return state_of_description(geocoder.description_for_number(number, "en"))


class Regions:
    """Area code -> state, with the answers kept (bounded: there are under 1,000 NANP area
    codes, so the limit is never reached by real numbers)."""

    __slots__ = ("_states",)
    MAX_ENTRIES = 2048

    def __init__(self) -> None:
        self._states: dict[str, str | None] = {}

    def state_of_npa(self, npa: str) -> str | None:
        """The state of a NANP area code, or None when unknown (or phonenumbers is missing)."""
        try:
            return self._states[npa]
        except KeyError:
            pass
        state = _lookup(npa)
        if len(self._states) < self.MAX_ENTRIES:
            self._states[npa] = state
        return state

    def preload(self) -> None:
        """Load the geocoding data now (about a quarter of a second, once per process)
        rather than in the middle of the first call that needs it."""
        self.state_of_npa("202")
