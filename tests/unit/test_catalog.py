import json
from dataclasses import replace
from datetime import date

import pytest

from services.orders.catalog import (
    CATALOG,
    Catalog,
    Category,
    ComponentWarranty,
    Fault,
    Model,
    Part,
    UnknownCatalogEntry,
    WarrantyTerm,
    add_months,
    catalog_as_dict,
)

REQUIRED_CATEGORIES = {"water_heater", "range_hood", "gas_hob", "air_conditioner",
                       "washing_machine"}


def by_component(warranty: list[ComponentWarranty]) -> dict[str, ComponentWarranty]:
    return {w.component: w for w in warranty}


def tiny(**overrides) -> dict:
    """The parts of a one-category catalogue, ready to break one piece at a time."""
    parts = {
        "categories": [Category("kettle", "Kettle", False,
                                (WarrantyTerm("unit", 12, 6), WarrantyTerm("element", 24, 6)))],
        "models": [Model("KT-1", "kettle", "Kettle 1.7 L")],
        "parts": [Part("KT-P-SWITCH", "kettle", "Switch", "unit"),
                  Part("KT-P-ELEMENT", "kettle", "Element", "element")],
        "faults": [Fault("KT-E1", "kettle", "does not boil",
                         frozenset({"KT-P-SWITCH", "KT-P-ELEMENT"})),
                   Fault("KT-U1", "kettle", "scale, needs descaling", frozenset())],
    }
    parts.update(overrides)
    return parts


# -- add_months -------------------------------------------------------------------------------


def test_add_months_moves_whole_months():
    assert add_months(date(2024, 3, 15), 1) == date(2024, 4, 15)
    assert add_months(date(2024, 3, 15), 12) == date(2025, 3, 15)
    assert add_months(date(2024, 11, 30), 3) == date(2025, 2, 28)


def test_add_months_clamps_to_month_end():
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2024, 8, 31), 1) == date(2024, 9, 30)
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)


def test_add_months_crosses_year_ends_both_ways():
    assert add_months(date(2024, 12, 10), 1) == date(2025, 1, 10)
    assert add_months(date(2025, 1, 10), -1) == date(2024, 12, 10)
    assert add_months(date(2024, 5, 5), 0) == date(2024, 5, 5)
    assert add_months(date(2020, 6, 1), 120) == date(2030, 6, 1)


# -- look-ups ---------------------------------------------------------------------------------


def test_known_codes_are_found():
    assert CATALOG.model("WH-E60A").category == "water_heater"
    assert CATALOG.model("AC-K35A").category == "air_conditioner"
    assert CATALOG.category("gas_hob").install_required is True
    assert CATALOG.part("AC-P-COMPRESSOR-S").component == "compressor"
    assert CATALOG.fault("WM-E1").category == "washing_machine"


def test_unknown_model_raises_a_named_error():
    with pytest.raises(UnknownCatalogEntry) as caught:
        CATALOG.model("XX-NOPE")
    assert caught.value.kind == "model"
    assert caught.value.code == "XX-NOPE"
    assert str(caught.value) == "unknown model 'XX-NOPE'"


@pytest.mark.parametrize("kind", ["category", "model", "part", "fault"])
def test_every_unknown_kind_is_a_key_error_naming_its_kind(kind):
    with pytest.raises(KeyError) as caught:
        getattr(CATALOG, kind)("NOPE")
    assert isinstance(caught.value, UnknownCatalogEntry)
    assert caught.value.kind == kind
    assert kind in str(caught.value) and "NOPE" in str(caught.value)


def test_listing_by_an_unknown_category_raises():
    with pytest.raises(UnknownCatalogEntry) as caught:
        CATALOG.models("toaster")
    assert caught.value.kind == "category"


def test_listings_filter_by_category():
    models = CATALOG.models("range_hood")
    assert models and all(m.category == "range_hood" for m in models)
    assert {f.category for f in CATALOG.faults("gas_hob")} == {"gas_hob"}
    assert {p.category for p in CATALOG.parts("washing_machine")} == {"washing_machine"}
    assert len(CATALOG.models()) == sum(len(CATALOG.models(c.code)) for c in CATALOG.categories())


# -- the shipped catalogue --------------------------------------------------------------------


def test_shipped_catalogue_has_the_five_core_categories():
    assert REQUIRED_CATEGORIES <= {c.code for c in CATALOG.categories()}


def test_every_category_has_at_least_5_models_and_5_faults():
    for category in CATALOG.categories():
        assert len(CATALOG.models(category.code)) >= 5, category.code
        assert len(CATALOG.faults(category.code)) >= 5, category.code


def test_every_category_has_8_to_15_parts():
    for category in CATALOG.categories():
        assert 8 <= len(CATALOG.parts(category.code)) <= 15, category.code


def test_every_category_has_a_unit_term_and_a_longer_key_part():
    for category in CATALOG.categories():
        terms = {t.component: t for t in category.terms}
        assert "unit" in terms, category.code
        assert any(t.parts_months > terms["unit"].parts_months for t in category.terms)


def test_every_faults_plausible_parts_are_in_its_own_category():
    for fault in CATALOG.faults():
        for code in fault.plausible_parts:
            assert CATALOG.part(code).category == fault.category, (fault.code, code)


def test_some_faults_need_no_part_at_all():
    assert any(not f.plausible_parts for f in CATALOG.faults())
    assert all(any(f.plausible_parts for f in CATALOG.faults(c.code))
               for c in CATALOG.categories())


def test_codes_are_stable_ascii_without_spaces():
    codes = ([c.code for c in CATALOG.categories()] + [m.code for m in CATALOG.models()]
             + [p.code for p in CATALOG.parts()] + [f.code for f in CATALOG.faults()])
    assert len(codes) == len(set(codes))
    assert all(code.isascii() and " " not in code for code in codes)


def test_of_the_core_five_only_the_washing_machine_needs_no_installation():
    installed = {c.code: c.install_required for c in CATALOG.categories()}
    assert installed["washing_machine"] is False
    assert all(installed[code] for code in REQUIRED_CATEGORIES - {"washing_machine"})


# -- the fault -> parts matrix ----------------------------------------------------------------


@pytest.mark.parametrize("fault, part", [
    ("WH-E1", "WH-P-HEATER-2KW"),
    ("WH-E1", "WH-P-THERMOSTAT"),
    ("WH-E1", "WH-P-BOARD"),
    ("AC-E1", "AC-P-COMPRESSOR-S"),
    ("AC-E1", "AC-P-REFRIGERANT"),
    ("AC-E1", "AC-P-OUT-FAN"),
    ("RH-E1", "RH-P-MOTOR"),
    ("RH-E1", "RH-P-IMPELLER"),
    ("GH-E1", "GH-P-IGNITER"),
    ("GH-E1", "GH-P-THERMOCOUPLE"),
    ("GH-E1", "GH-P-VALVE"),
    ("WM-E1", "WM-P-DRAIN-PUMP"),
    ("WM-E1", "WM-P-DRAIN-HOSE"),
])
def test_the_obvious_parts_are_plausible_for_their_faults(fault, part):
    assert CATALOG.is_part_plausible(fault, part)


def test_part_plausible_only_for_its_faults():
    assert CATALOG.is_part_plausible("WM-E1", "WM-P-DRAIN-PUMP")
    assert not CATALOG.is_part_plausible("WM-E4", "WM-P-DRAIN-PUMP")  # door will not lock
    assert not CATALOG.is_part_plausible("WH-E6", "WH-P-TANK-60L")  # smelly water: the anode
    assert not CATALOG.is_part_plausible("AC-E1", "WH-P-HEATER-2KW")  # another category


def test_a_settings_fault_has_no_plausible_part():
    fault = CATALOG.fault("AC-U1")
    assert fault.plausible_parts == frozenset()
    assert not any(CATALOG.is_part_plausible("AC-U1", p.code)
                   for p in CATALOG.parts("air_conditioner"))


def test_plausibility_of_unknown_codes_raises():
    with pytest.raises(UnknownCatalogEntry) as caught:
        CATALOG.is_part_plausible("WH-E1", "WH-P-FLUX-CAPACITOR")
    assert caught.value.kind == "part"
    with pytest.raises(UnknownCatalogEntry) as caught:
        CATALOG.is_part_plausible("WH-E99", "WH-P-BOARD")
    assert caught.value.kind == "fault"


def test_fault_belongs_to_models_of_its_category_only():
    assert CATALOG.fault_belongs_to("WH-E1", "WH-E60A")
    assert not CATALOG.fault_belongs_to("AC-E1", "WH-E60A")
    with pytest.raises(UnknownCatalogEntry):
        CATALOG.fault_belongs_to("WH-E1", "WH-NOPE")


def test_component_of_a_key_part_is_its_own_warranty_term():
    assert CATALOG.component_of_part("AC-P-COMPRESSOR-L") == "compressor"
    assert CATALOG.component_of_part("WH-P-TANK-80L") == "inner_tank"
    assert CATALOG.component_of_part("WM-P-MOTOR") == "motor"
    assert CATALOG.component_of_part("AC-P-CAPACITOR") == "unit"


# -- warranty ---------------------------------------------------------------------------------


def test_warranty_starts_at_installation_for_installed_categories():
    start = CATALOG.warranty_start("WH-E60A", date(2025, 3, 1), date(2025, 3, 9))
    assert start == date(2025, 3, 9)


def test_warranty_starts_at_purchase_when_installation_is_unknown():
    assert CATALOG.warranty_start("AC-K35A", date(2025, 3, 1), None) == date(2025, 3, 1)


def test_washing_machine_warranty_starts_at_purchase_even_if_installed():
    start = CATALOG.warranty_start("WM-F80A", date(2025, 3, 1), date(2025, 3, 9))
    assert start == date(2025, 3, 1)


def test_warranty_lists_every_term_with_the_unit_first():
    warranty = CATALOG.warranty("AC-K35A", date(2025, 1, 1), None, date(2025, 6, 1))
    assert warranty[0].component == "unit"
    assert {w.component for w in warranty} == {t.component for t in
                                                CATALOG.category("air_conditioner").terms}


def test_compressor_is_covered_longer_than_the_unit():
    terms = by_component(CATALOG.warranty("AC-K35A", date(2020, 5, 1), date(2020, 5, 3),
                                          on=date(2024, 6, 1)))
    assert terms["compressor"].parts_until > terms["unit"].parts_until
    assert terms["compressor"].parts_covered is True
    assert terms["unit"].parts_covered is False


def test_labour_ends_before_parts_for_a_key_part():
    # AC compressor: 6 years of free parts, 1 year of free labour
    terms = by_component(CATALOG.warranty("AC-K35A", date(2024, 1, 1), None,
                                          on=date(2026, 1, 1)))
    compressor = terms["compressor"]
    assert compressor.parts_until == date(2029, 12, 31)
    assert compressor.labour_until == date(2024, 12, 31)
    assert compressor.parts_covered is True
    assert compressor.labour_covered is False


def test_inner_tank_has_eight_years_of_parts_and_three_of_labour():
    tank = by_component(CATALOG.warranty("WH-E60A", date(2021, 7, 10), date(2021, 7, 12),
                                         on=date(2021, 7, 12)))["inner_tank"]
    assert tank.parts_until == date(2029, 7, 11)
    assert tank.labour_until == date(2024, 7, 11)


def test_last_covered_day_is_inclusive_and_the_day_after_is_not():
    start = date(2025, 4, 10)
    end = CATALOG.warranty_end("WM-F80A", start, None)
    assert end == date(2027, 4, 9)
    on_last = by_component(CATALOG.warranty("WM-F80A", start, None, on=end))["unit"]
    after = by_component(CATALOG.warranty("WM-F80A", start, None, on=date(2027, 4, 10)))["unit"]
    assert on_last.parts_covered is True
    assert after.parts_covered is False


def test_labour_boundary_day_is_inclusive():
    start = date(2025, 4, 10)
    unit = by_component(CATALOG.warranty("WM-F80A", start, None, on=date(2026, 4, 9)))["unit"]
    assert unit.labour_until == date(2026, 4, 9) and unit.labour_covered is True
    unit = by_component(CATALOG.warranty("WM-F80A", start, None, on=date(2026, 4, 10)))["unit"]
    assert unit.labour_covered is False and unit.parts_covered is True


def test_nothing_is_covered_before_the_warranty_starts():
    warranty = CATALOG.warranty("WH-E60A", date(2025, 3, 1), date(2025, 3, 9),
                                on=date(2025, 3, 8))
    assert not any(w.parts_covered or w.labour_covered for w in warranty)


def test_warranty_from_month_end_clamps_its_last_day():
    # a 24-month term from 31 Jan 2024 runs to 30 Jan 2026
    assert CATALOG.warranty_end("WM-F80A", date(2024, 1, 31), None) == date(2026, 1, 30)
    # a 24-month term from 29 Feb 2024 runs to 27 Feb 2026 (28 Feb 2026, minus a day)
    assert CATALOG.warranty_end("WM-F80A", date(2024, 2, 29), None) == date(2026, 2, 27)


def test_warranty_end_is_the_unit_parts_end_from_installation():
    end = CATALOG.warranty_end("AC-K35A", date(2025, 3, 1), date(2025, 3, 9))
    unit = by_component(CATALOG.warranty("AC-K35A", date(2025, 3, 1), date(2025, 3, 9),
                                         on=date(2025, 3, 9)))["unit"]
    assert end == unit.parts_until == date(2028, 3, 8)


def test_warranty_of_an_unknown_model_raises():
    with pytest.raises(UnknownCatalogEntry):
        CATALOG.warranty("NOPE", date(2025, 1, 1), None, date(2025, 1, 1))


# -- validation -------------------------------------------------------------------------------


def test_a_consistent_catalogue_is_accepted():
    catalog = Catalog(**tiny())
    assert catalog.is_part_plausible("KT-E1", "KT-P-ELEMENT")


def test_catalogue_rejects_a_fault_pointing_at_a_missing_part():
    broken = [Fault("KT-E1", "kettle", "does not boil", frozenset({"KT-P-GHOST"}))]
    with pytest.raises(ValueError, match="KT-P-GHOST"):
        Catalog(**tiny(faults=broken))


def test_catalogue_rejects_a_fault_pointing_at_another_categorys_part():
    base = tiny()
    toaster = Category("toaster", "Toaster", False, (WarrantyTerm("unit", 12, 12),))
    foreign = Part("TS-P-SPRING", "toaster", "Spring", "unit")
    fault = Fault("KT-E2", "kettle", "lid will not open", frozenset({"TS-P-SPRING"}))
    with pytest.raises(ValueError, match="TS-P-SPRING"):
        Catalog(categories=[*base["categories"], toaster], models=base["models"],
                parts=[*base["parts"], foreign], faults=[*base["faults"], fault])


@pytest.mark.parametrize("kind, entry", [
    ("models", Model("KT-2", "teapot", "Teapot")),
    ("parts", Part("KT-P-LID", "teapot", "Lid", "unit")),
    ("faults", Fault("KT-E9", "teapot", "cracked", frozenset())),
])
def test_catalogue_rejects_an_entry_of_an_unknown_category(kind, entry):
    with pytest.raises(ValueError, match="teapot"):
        Catalog(**tiny(**{kind: [*tiny()[kind], entry]}))


def test_catalogue_rejects_a_part_whose_component_has_no_warranty_term():
    base = tiny()
    odd = Part("KT-P-BASE", "kettle", "Base", "compressor")
    with pytest.raises(ValueError, match="compressor"):
        Catalog(**tiny(parts=[*base["parts"], odd]))


def test_catalogue_rejects_a_category_without_a_unit_term():
    category = replace(tiny()["categories"][0], terms=(WarrantyTerm("element", 24, 6),))
    with pytest.raises(ValueError, match="unit"):
        Catalog(**tiny(categories=[category], parts=[tiny()["parts"][1]],
                       faults=[Fault("KT-E1", "kettle", "cold", frozenset({"KT-P-ELEMENT"}))]))


def test_catalogue_rejects_duplicate_codes():
    base = tiny()
    with pytest.raises(ValueError, match="KT-1"):
        Catalog(**tiny(models=[*base["models"], Model("KT-1", "kettle", "Another")]))


def test_catalogue_rejects_codes_with_spaces():
    with pytest.raises(ValueError, match="KT 2"):
        Catalog(**tiny(models=[Model("KT 2", "kettle", "Kettle")]))


# -- the RPC dump -----------------------------------------------------------------------------


def test_catalog_as_dict_is_json_ready_and_complete():
    dumped = catalog_as_dict()
    assert json.loads(json.dumps(dumped)) == dumped
    assert len(dumped["models"]) == len(CATALOG.models())
    assert len(dumped["parts"]) == len(CATALOG.parts())
    assert len(dumped["faults"]) == len(CATALOG.faults())
    heater = next(c for c in dumped["categories"] if c["code"] == "water_heater")
    assert heater["install_required"] is True
    assert {"component": "inner_tank", "parts_months": 96, "labour_months": 36} in heater["terms"]


def test_catalog_as_dict_lists_plausible_parts_sorted():
    dumped = catalog_as_dict(Catalog(**tiny()))
    fault = next(f for f in dumped["faults"] if f["code"] == "KT-E1")
    assert fault["plausible_parts"] == ["KT-P-ELEMENT", "KT-P-SWITCH"]
    assert dumped["models"] == [{"code": "KT-1", "category": "kettle", "name": "Kettle 1.7 L"}]
    assert dumped["parts"][1] == {"code": "KT-P-ELEMENT", "category": "kettle",
                                  "name": "Element", "component": "element"}
