"""The product and fault catalogue: reference data the order and settlement rules need.

Categories carry their warranty terms (the whole unit, and key parts that are covered longer),
models belong to a category, and each fault code lists the parts plausible for it: settlement
holds a part claim for review when the part is not plausible for the recorded fault.

Plain data and pure functions: no I/O, no clock; every date is passed in.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

UNIT = "unit"


@dataclass(frozen=True)
class WarrantyTerm:
    component: str  # "unit" = the whole appliance; else a key part such as "compressor"
    parts_months: int  # months from warranty start during which replacement parts are free
    labour_months: int  # months during which labour is free


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    install_required: bool  # warranty starts at installation rather than purchase
    terms: tuple[WarrantyTerm, ...]


@dataclass(frozen=True)
class Model:
    code: str
    category: str
    name: str


@dataclass(frozen=True)
class Part:
    code: str
    category: str
    name: str
    component: str  # the warranty component that covers this part


@dataclass(frozen=True)
class Fault:
    code: str
    category: str
    symptom: str  # what the customer describes
    plausible_parts: frozenset[str]  # empty when no part is ever needed (settings, cleaning)


@dataclass(frozen=True)
class ComponentWarranty:
    component: str
    parts_until: date  # last covered day, inclusive
    labour_until: date
    parts_covered: bool  # on the day asked about
    labour_covered: bool


class UnknownCatalogEntry(KeyError):
    """A code that is not in the catalogue; `kind` is model, fault, part or category."""

    def __init__(self, kind: str, code: str) -> None:
        super().__init__(kind, code)
        self.kind = kind
        self.code = code

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.code!r}"


def add_months(day: date, months: int) -> date:
    """`day` moved by whole months, the day of month clamped (Jan 31 + 1 month = Feb 28/29)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


class Catalog:
    def __init__(self, categories: Iterable[Category], models: Iterable[Model],
                 parts: Iterable[Part], faults: Iterable[Fault]) -> None:
        self._categories = _index("category", categories)
        self._models = _index("model", models)
        self._parts = _index("part", parts)
        self._faults = _index("fault", faults)
        self._validate()

    def _validate(self) -> None:
        for category in self._categories.values():
            components = [t.component for t in category.terms]
            if UNIT not in components:
                raise ValueError(f"category {category.code} has no {UNIT!r} warranty term")
            if len(set(components)) != len(components):
                raise ValueError(f"category {category.code} repeats a warranty component")
        for kind, entries in (("model", self._models), ("part", self._parts),
                              ("fault", self._faults)):
            for entry in entries.values():
                if entry.category not in self._categories:
                    raise ValueError(f"{kind} {entry.code} names unknown category "
                                     f"{entry.category!r}")
        for part in self._parts.values():
            terms = {t.component for t in self._categories[part.category].terms}
            if part.component not in terms:
                raise ValueError(f"part {part.code} is covered by {part.component!r}, "
                                 f"not a warranty term of {part.category}")
        for fault in self._faults.values():
            for code in sorted(fault.plausible_parts):
                part = self._parts.get(code)
                if part is None:
                    raise ValueError(f"fault {fault.code} points at unknown part {code!r}")
                if part.category != fault.category:
                    raise ValueError(f"fault {fault.code} ({fault.category}) points at part "
                                     f"{code} of {part.category}")

    # -- look-ups ---------------------------------------------------------------------------

    def category(self, code: str) -> Category:
        return _get(self._categories, "category", code)

    def model(self, code: str) -> Model:
        return _get(self._models, "model", code)

    def part(self, code: str) -> Part:
        return _get(self._parts, "part", code)

    def fault(self, code: str) -> Fault:
        return _get(self._faults, "fault", code)

    def categories(self) -> list[Category]:
        return list(self._categories.values())

    def models(self, category: str | None = None) -> list[Model]:
        return self._in(self._models, category)

    def parts(self, category: str | None = None) -> list[Part]:
        return self._in(self._parts, category)

    def faults(self, category: str | None = None) -> list[Fault]:
        return self._in(self._faults, category)

    def _in(self, entries: dict, category: str | None) -> list:
        if category is None:
            return list(entries.values())
        self.category(category)
        return [e for e in entries.values() if e.category == category]

    # -- rules ------------------------------------------------------------------------------

    def fault_belongs_to(self, fault_code: str, model_code: str) -> bool:
        return self.fault(fault_code).category == self.model(model_code).category

    def is_part_plausible(self, fault_code: str, part_code: str) -> bool:
        fault = self.fault(fault_code)
        return self.part(part_code).code in fault.plausible_parts

    def component_of_part(self, part_code: str) -> str:
        return self.part(part_code).component

    def warranty_start(self, model_code: str, purchase_date: date,
                       installation_date: date | None) -> date:
        """Installation day for categories that need installing (when known), else purchase."""
        category = self.category(self.model(model_code).category)
        if category.install_required and installation_date is not None:
            return installation_date
        return purchase_date

    def warranty(self, model_code: str, purchase_date: date, installation_date: date | None,
                 on: date) -> list[ComponentWarranty]:
        """One entry per warranty term of the model's category, the whole unit first."""
        start = self.warranty_start(model_code, purchase_date, installation_date)
        category = self.category(self.model(model_code).category)
        terms = sorted(category.terms, key=lambda t: t.component != UNIT)
        result = []
        for term in terms:
            parts_until = add_months(start, term.parts_months) - timedelta(days=1)
            labour_until = add_months(start, term.labour_months) - timedelta(days=1)
            result.append(ComponentWarranty(
                component=term.component, parts_until=parts_until, labour_until=labour_until,
                parts_covered=start <= on <= parts_until,
                labour_covered=start <= on <= labour_until,
            ))
        return result

    def warranty_end(self, model_code: str, purchase_date: date,
                     installation_date: date | None) -> date:
        """The last day the whole unit's parts are covered: the date the call centre quotes."""
        start = self.warranty_start(model_code, purchase_date, installation_date)
        return self.warranty(model_code, purchase_date, installation_date, start)[0].parts_until


def _index(kind: str, entries: Iterable) -> dict:
    indexed: dict = {}
    for entry in entries:
        if not entry.code or not entry.code.isascii() or any(c.isspace() for c in entry.code):
            raise ValueError(f"{kind} code {entry.code!r} must be ASCII without spaces")
        if entry.code in indexed:
            raise ValueError(f"{kind} {entry.code} is listed twice")
        indexed[entry.code] = entry
    return indexed


def _get(entries: dict, kind: str, code: str):  # noqa: ANN202 - the entry of that kind
    try:
        return entries[code]
    except (KeyError, TypeError):
        raise UnknownCatalogEntry(kind, code) from None


# -- the shipped catalogue ------------------------------------------------------------------

# category -> (name, installation required, warranty terms as (component, parts, labour months))
_CATEGORIES = {
    "water_heater": ("Water heater", True,
                     ((UNIT, 36, 12), ("inner_tank", 96, 36), ("heat_exchanger", 60, 12))),
    "range_hood": ("Range hood", True, ((UNIT, 24, 12), ("motor", 60, 24))),
    "gas_hob": ("Gas hob", True, ((UNIT, 24, 12), ("gas_valve", 60, 12))),
    "air_conditioner": ("Air conditioner", True, ((UNIT, 36, 12), ("compressor", 72, 12))),
    "washing_machine": ("Washing machine", False, ((UNIT, 24, 12), ("motor", 120, 12))),
    "refrigerator": ("Refrigerator", False, ((UNIT, 36, 12), ("compressor", 120, 36))),
}

# category -> (model code, name)
_MODELS = {
    "water_heater": (
        ("WH-E40A", "Electric storage water heater 40 L"),
        ("WH-E50A", "Electric storage water heater 50 L"),
        ("WH-E60A", "Electric storage water heater 60 L"),
        ("WH-E60S", "Electric storage water heater 60 L, smart"),
        ("WH-E80A", "Electric storage water heater 80 L"),
        ("WH-G12A", "Gas instantaneous water heater 12 L/min"),
        ("WH-G13B", "Gas instantaneous water heater 13 L/min, constant temperature"),
        ("WH-G16A", "Gas instantaneous water heater 16 L/min"),
    ),
    "range_hood": (
        ("RH-T750", "T-shape range hood 750 mm"),
        ("RH-T900", "T-shape range hood 900 mm"),
        ("RH-S760", "Side-draft range hood 760 mm"),
        ("RH-S900", "Side-draft range hood 900 mm"),
        ("RH-C600", "Slim range hood 600 mm"),
        ("RH-I900", "Island range hood 900 mm"),
    ),
    "gas_hob": (
        ("GH-1B30", "Single-burner gas hob"),
        ("GH-2B40", "Two-burner gas hob, steel top"),
        ("GH-2G40", "Two-burner gas hob, glass top"),
        ("GH-2G45", "Two-burner gas hob, glass top, 4.5 kW"),
        ("GH-3G60", "Three-burner gas hob, glass top"),
        ("GH-5G90", "Five-burner gas hob, glass top"),
    ),
    "air_conditioner": (
        ("AC-K26A", "Split wall air conditioner 2.6 kW, inverter"),
        ("AC-K35A", "Split wall air conditioner 3.5 kW, inverter"),
        ("AC-K35B", "Split wall air conditioner 3.5 kW, fixed speed"),
        ("AC-K50A", "Split wall air conditioner 5.0 kW, inverter"),
        ("AC-F51A", "Floor-standing air conditioner 5.1 kW"),
        ("AC-F72A", "Floor-standing air conditioner 7.2 kW"),
        ("AC-D120", "Ducted air conditioner 12 kW"),
    ),
    "washing_machine": (
        ("WM-T70A", "Top-loading washing machine 7 kg"),
        ("WM-T90A", "Top-loading washing machine 9 kg"),
        ("WM-F80A", "Front-loading washing machine 8 kg"),
        ("WM-F100A", "Front-loading washing machine 10 kg, direct drive"),
        ("WM-F100D", "Front-loading washer-dryer 10 kg"),
        ("WM-F120A", "Front-loading washing machine 12 kg, direct drive"),
    ),
    "refrigerator": (
        ("RF-T210", "Two-door refrigerator 210 L"),
        ("RF-M330", "Three-door refrigerator 330 L"),
        ("RF-F450", "French-door refrigerator 450 L"),
        ("RF-B470", "Bottom-freezer refrigerator 470 L"),
        ("RF-B520", "Bottom-freezer refrigerator 520 L"),
        ("RF-S630", "Side-by-side refrigerator 630 L"),
    ),
}

# category -> (part code, name, warranty component)
_PARTS = {
    "water_heater": (
        ("WH-P-HEATER-2KW", "Heating element 2 kW", UNIT),
        ("WH-P-HEATER-3KW", "Heating element 3 kW", UNIT),
        ("WH-P-THERMOSTAT", "Thermostat", UNIT),
        ("WH-P-CUTOUT", "Overheat cut-out", UNIT),
        ("WH-P-BOARD", "Controller board with display", UNIT),
        ("WH-P-ANODE", "Magnesium anode rod", UNIT),
        ("WH-P-RELIEF-VALVE", "Pressure relief valve", UNIT),
        ("WH-P-GASKET", "Heating flange gasket", UNIT),
        ("WH-P-TANK-60L", "Inner tank 60 L", "inner_tank"),
        ("WH-P-TANK-80L", "Inner tank 80 L", "inner_tank"),
        ("WH-P-HX-13L", "Heat exchanger 13 L", "heat_exchanger"),
        ("WH-P-IGNITER", "Pulse igniter", UNIT),
        ("WH-P-FLOW-SENSOR", "Water flow sensor", UNIT),
        ("WH-P-FAN", "Flue fan", UNIT),
        ("WH-P-GAS-VALVE", "Gas proportional valve", UNIT),
    ),
    "range_hood": (
        ("RH-P-MOTOR", "Fan motor", "motor"),
        ("RH-P-IMPELLER", "Impeller", UNIT),
        ("RH-P-CAPACITOR", "Motor run capacitor", UNIT),
        ("RH-P-SWITCH", "Control panel", UNIT),
        ("RH-P-BOARD", "Power board", UNIT),
        ("RH-P-LAMP", "LED lamp", UNIT),
        ("RH-P-FILTER", "Grease filter", UNIT),
        ("RH-P-CHECK-VALVE", "Anti-backdraft flap", UNIT),
        ("RH-P-OIL-CUP", "Oil cup", UNIT),
        ("RH-P-DUCT", "Exhaust duct 1.5 m", UNIT),
    ),
    "gas_hob": (
        ("GH-P-IGNITER", "Ignition electrode", UNIT),
        ("GH-P-PULSE", "Pulse ignition module", UNIT),
        ("GH-P-THERMOCOUPLE", "Flame-failure thermocouple", UNIT),
        ("GH-P-VALVE", "Gas valve", "gas_valve"),
        ("GH-P-BURNER", "Burner head", UNIT),
        ("GH-P-BURNER-CAP", "Burner cap", UNIT),
        ("GH-P-KNOB", "Control knob", UNIT),
        ("GH-P-GLASS", "Glass top panel", UNIT),
        ("GH-P-BATTERY-BOX", "Battery box", UNIT),
        ("GH-P-INLET", "Gas inlet fitting", UNIT),
        ("GH-P-PAN-SUPPORT", "Pan support", UNIT),
    ),
    "air_conditioner": (
        ("AC-P-COMPRESSOR-S", "Rotary compressor, up to 3.5 kW", "compressor"),
        ("AC-P-COMPRESSOR-L", "Rotary compressor, 5 kW and up", "compressor"),
        ("AC-P-CAPACITOR", "Compressor capacitor", UNIT),
        ("AC-P-REFRIGERANT", "Refrigerant recharge R32", UNIT),
        ("AC-P-OUT-FAN", "Outdoor fan motor", UNIT),
        ("AC-P-IN-FAN", "Indoor fan motor", UNIT),
        ("AC-P-IN-BOARD", "Indoor control board", UNIT),
        ("AC-P-OUT-BOARD", "Outdoor inverter board", UNIT),
        ("AC-P-REMOTE", "Remote control", UNIT),
        ("AC-P-TEMP-SENSOR", "Temperature sensor", UNIT),
        ("AC-P-4WAY-VALVE", "Four-way reversing valve", UNIT),
        ("AC-P-EXV", "Electronic expansion valve", UNIT),
        ("AC-P-DRAIN-HOSE", "Condensate drain hose", UNIT),
        ("AC-P-SWING-MOTOR", "Louvre swing motor", UNIT),
    ),
    "washing_machine": (
        ("WM-P-MOTOR", "Drive motor", "motor"),
        ("WM-P-BELT", "Drive belt", UNIT),
        ("WM-P-DRAIN-PUMP", "Drain pump", UNIT),
        ("WM-P-DRAIN-HOSE", "Drain hose", UNIT),
        ("WM-P-INLET-VALVE", "Water inlet valve", UNIT),
        ("WM-P-LEVEL-SENSOR", "Water level sensor", UNIT),
        ("WM-P-DOOR-LOCK", "Door lock", UNIT),
        ("WM-P-DOOR-SEAL", "Door seal", UNIT),
        ("WM-P-BOARD", "Main control board", UNIT),
        ("WM-P-BEARING", "Drum bearing kit", UNIT),
        ("WM-P-SHOCK", "Shock absorber", UNIT),
        ("WM-P-HEATER", "Heating element", UNIT),
    ),
    "refrigerator": (
        ("RF-P-COMPRESSOR", "Compressor", "compressor"),
        ("RF-P-START-RELAY", "PTC start relay", UNIT),
        ("RF-P-REFRIGERANT", "Refrigerant recharge R600a", UNIT),
        ("RF-P-BOARD", "Main control board", UNIT),
        ("RF-P-TEMP-SENSOR", "Temperature sensor", UNIT),
        ("RF-P-EVAP-FAN", "Evaporator fan", UNIT),
        ("RF-P-COND-FAN", "Condenser fan", UNIT),
        ("RF-P-DEFROST-HEATER", "Defrost heater", UNIT),
        ("RF-P-DEFROST-SENSOR", "Defrost sensor", UNIT),
        ("RF-P-DOOR-SEAL", "Door seal", UNIT),
        ("RF-P-HINGE", "Door hinge", UNIT),
        ("RF-P-LAMP", "LED lamp", UNIT),
        ("RF-P-ICE-MAKER", "Ice maker", UNIT),
    ),
}

# category -> (fault code, symptom, plausible parts)
_FAULTS = {
    "water_heater": (
        ("WH-E1", "no hot water", ("WH-P-HEATER-2KW", "WH-P-HEATER-3KW", "WH-P-THERMOSTAT",
                                   "WH-P-CUTOUT", "WH-P-BOARD")),
        ("WH-E2", "water only lukewarm", ("WH-P-HEATER-2KW", "WH-P-HEATER-3KW",
                                          "WH-P-THERMOSTAT", "WH-P-BOARD")),
        ("WH-E3", "leaks at the bottom", ("WH-P-TANK-60L", "WH-P-TANK-80L", "WH-P-GASKET")),
        ("WH-E4", "trips the circuit breaker", ("WH-P-HEATER-2KW", "WH-P-HEATER-3KW",
                                                "WH-P-BOARD")),
        ("WH-E5", "display blank, no power", ("WH-P-BOARD",)),
        ("WH-E6", "hot water smells or is discoloured", ("WH-P-ANODE",)),
        ("WH-E7", "relief valve keeps dripping", ("WH-P-RELIEF-VALVE",)),
        ("WH-E8", "gas heater will not ignite", ("WH-P-IGNITER", "WH-P-GAS-VALVE",
                                                 "WH-P-FLOW-SENSOR", "WH-P-FAN", "WH-P-BOARD")),
        ("WH-E9", "gas heater leaks water inside the casing", ("WH-P-HX-13L",)),
        ("WH-U1", "no fault found: settings or user error", ()),
    ),
    "range_hood": (
        ("RH-E1", "weak suction", ("RH-P-MOTOR", "RH-P-IMPELLER", "RH-P-CAPACITOR",
                                   "RH-P-CHECK-VALVE", "RH-P-DUCT")),
        ("RH-E2", "does not start", ("RH-P-MOTOR", "RH-P-CAPACITOR", "RH-P-SWITCH",
                                     "RH-P-BOARD")),
        ("RH-E3", "loud noise or vibration", ("RH-P-IMPELLER", "RH-P-MOTOR")),
        ("RH-E4", "oil drips from the hood", ("RH-P-OIL-CUP", "RH-P-CHECK-VALVE")),
        ("RH-E5", "light does not work", ("RH-P-LAMP", "RH-P-BOARD")),
        ("RH-E6", "buttons do not respond", ("RH-P-SWITCH", "RH-P-BOARD")),
        ("RH-E7", "smoke or smell comes back from the duct", ("RH-P-CHECK-VALVE", "RH-P-DUCT")),
        ("RH-C1", "grease build-up, needs cleaning", ()),
    ),
    "gas_hob": (
        ("GH-E1", "will not ignite", ("GH-P-IGNITER", "GH-P-PULSE", "GH-P-THERMOCOUPLE",
                                      "GH-P-VALVE", "GH-P-BATTERY-BOX")),
        ("GH-E2", "flame goes out when the knob is released", ("GH-P-THERMOCOUPLE",
                                                               "GH-P-VALVE")),
        ("GH-E3", "flame yellow or uneven", ("GH-P-BURNER", "GH-P-BURNER-CAP")),
        ("GH-E4", "smell of gas", ("GH-P-VALVE", "GH-P-INLET")),
        ("GH-E5", "knob stiff or broken", ("GH-P-KNOB", "GH-P-VALVE")),
        ("GH-E6", "glass top cracked", ("GH-P-GLASS",)),
        ("GH-E7", "keeps clicking after lighting", ("GH-P-PULSE", "GH-P-IGNITER")),
        ("GH-E8", "pan wobbles, support bent", ("GH-P-PAN-SUPPORT",)),
        ("GH-U1", "no fault found: flat batteries or burner needs cleaning", ()),
    ),
    "air_conditioner": (
        ("AC-E1", "not cooling", ("AC-P-COMPRESSOR-S", "AC-P-COMPRESSOR-L", "AC-P-CAPACITOR",
                                  "AC-P-REFRIGERANT", "AC-P-OUT-FAN", "AC-P-OUT-BOARD",
                                  "AC-P-EXV")),
        ("AC-E2", "not heating", ("AC-P-4WAY-VALVE", "AC-P-REFRIGERANT", "AC-P-OUT-BOARD",
                                  "AC-P-TEMP-SENSOR", "AC-P-EXV")),
        ("AC-E3", "water drips from the indoor unit", ("AC-P-DRAIN-HOSE",)),
        ("AC-E4", "no power, does not respond to the remote", ("AC-P-IN-BOARD", "AC-P-REMOTE")),
        ("AC-E5", "indoor unit noisy", ("AC-P-IN-FAN", "AC-P-SWING-MOTOR")),
        ("AC-E6", "outdoor unit noisy or vibrating", ("AC-P-OUT-FAN", "AC-P-COMPRESSOR-S",
                                                      "AC-P-COMPRESSOR-L")),
        ("AC-E7", "louvre does not swing", ("AC-P-SWING-MOTOR", "AC-P-IN-BOARD")),
        ("AC-E8", "error code shown, units do not communicate", ("AC-P-IN-BOARD",
                                                                 "AC-P-OUT-BOARD",
                                                                 "AC-P-TEMP-SENSOR")),
        ("AC-C1", "bad smell, filter needs cleaning", ()),
        ("AC-U1", "no fault found: mode or temperature settings", ()),
    ),
    "washing_machine": (
        ("WM-E1", "won't drain", ("WM-P-DRAIN-PUMP", "WM-P-DRAIN-HOSE", "WM-P-LEVEL-SENSOR")),
        ("WM-E2", "won't fill with water", ("WM-P-INLET-VALVE", "WM-P-LEVEL-SENSOR",
                                            "WM-P-BOARD")),
        ("WM-E3", "drum does not turn or spin", ("WM-P-MOTOR", "WM-P-BELT", "WM-P-BOARD")),
        ("WM-E4", "door will not lock or open", ("WM-P-DOOR-LOCK", "WM-P-BOARD")),
        ("WM-E5", "leaks water", ("WM-P-DOOR-SEAL", "WM-P-DRAIN-HOSE", "WM-P-DRAIN-PUMP",
                                  "WM-P-INLET-VALVE")),
        ("WM-E6", "loud noise when spinning", ("WM-P-BEARING", "WM-P-SHOCK", "WM-P-MOTOR")),
        ("WM-E7", "shakes and walks while spinning", ("WM-P-SHOCK",)),
        ("WM-E8", "water not heated", ("WM-P-HEATER", "WM-P-BOARD")),
        ("WM-E9", "panel dead, no power", ("WM-P-BOARD",)),
        ("WM-U1", "no fault found: transport bolts left in or unbalanced load", ()),
    ),
    "refrigerator": (
        ("RF-E1", "not cooling at all", ("RF-P-COMPRESSOR", "RF-P-START-RELAY",
                                         "RF-P-REFRIGERANT", "RF-P-BOARD", "RF-P-COND-FAN")),
        ("RF-E2", "fridge warm while the freezer is cold", ("RF-P-EVAP-FAN",
                                                            "RF-P-DEFROST-HEATER",
                                                            "RF-P-DEFROST-SENSOR",
                                                            "RF-P-TEMP-SENSOR")),
        ("RF-E3", "heavy frost in the freezer", ("RF-P-DEFROST-HEATER", "RF-P-DEFROST-SENSOR",
                                                 "RF-P-DOOR-SEAL")),
        ("RF-E4", "loud noise", ("RF-P-EVAP-FAN", "RF-P-COND-FAN", "RF-P-COMPRESSOR")),
        ("RF-E5", "door does not close tight", ("RF-P-DOOR-SEAL", "RF-P-HINGE")),
        ("RF-E6", "light does not come on", ("RF-P-LAMP", "RF-P-BOARD")),
        ("RF-E7", "ice maker makes no ice", ("RF-P-ICE-MAKER", "RF-P-BOARD")),
        ("RF-E8", "error code on the display", ("RF-P-BOARD", "RF-P-TEMP-SENSOR")),
        ("RF-C1", "water pools under the drawers, drain needs clearing", ()),
        ("RF-U1", "no fault found: temperature settings", ()),
    ),
}

CATALOG = Catalog(
    categories=[Category(code, name, install, tuple(WarrantyTerm(*term) for term in terms))
                for code, (name, install, terms) in _CATEGORIES.items()],
    models=[Model(code, category, name)
            for category, rows in _MODELS.items() for code, name in rows],
    parts=[Part(code, category, name, component)
           for category, rows in _PARTS.items() for code, name, component in rows],
    faults=[Fault(code, category, symptom, frozenset(parts))
            for category, rows in _FAULTS.items() for code, symptom, parts in rows],
)


def catalog_as_dict(catalog: Catalog = CATALOG) -> dict:
    """A JSON-ready dump of the catalogue, for the `catalog` RPC."""
    return {
        "categories": [{
            "code": c.code, "name": c.name, "install_required": c.install_required,
            "terms": [{"component": t.component, "parts_months": t.parts_months,
                       "labour_months": t.labour_months} for t in c.terms],
        } for c in catalog.categories()],
        "models": [{"code": m.code, "category": m.category, "name": m.name}
                   for m in catalog.models()],
        "parts": [{"code": p.code, "category": p.category, "name": p.name,
                   "component": p.component} for p in catalog.parts()],
        "faults": [{"code": f.code, "category": f.category, "symptom": f.symptom,
                    "plausible_parts": sorted(f.plausible_parts)} for f in catalog.faults()],
    }
