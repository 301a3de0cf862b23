import math
from collections import Counter
from datetime import date

import pytest

from serviceloop.seed_data import (
    CITIES,
    DISTRICTS,
    Address,
    CustomerSeed,
    District,
    PartnerSeed,
    districts_of,
    generate_customers,
    generate_partners,
)

TODAY = date(2026, 11, 2)
MODELS = {
    "空调": ["KFR-35GW/BpR3", "KFR-72LW/NhA1"],
    "洗衣机": ["XQG100-B14276", "TG80-1411"],
    "冰箱": ["BCD-470WDPG"],
    "热水器": ["JSQ25-13HP5"],
    "油烟机": ["CXW-260-E900C"],
}
INSTALL = {"空调": True, "洗衣机": False, "冰箱": False, "热水器": True, "油烟机": True}
CATEGORIES = list(MODELS)

VALID_PREFIXES = (
    {str(p) for p in range(130, 140)}
    | {"145", "147", "150", "151", "152", "153", "155", "156", "157", "158", "159", "166"}
    | {"173", "175", "176", "177", "178"}
    | {str(p) for p in range(180, 190)}
    | {"191", "198", "199"}
)


def customers(count: int, seed: int = 7, today: date = TODAY) -> list[CustomerSeed]:
    return list(
        generate_customers(
            count, seed=seed, today=today, models_by_category=MODELS, install_required=INSTALL
        )
    )


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


@pytest.fixture(scope="module")
def many() -> list[CustomerSeed]:
    return customers(5000)


# --- geography tables -------------------------------------------------------


def test_geography_table_shape():
    provinces = {d.province for d in DISTRICTS}
    assert len(provinces) >= 8
    expected = {"广东省", "浙江省", "江苏省", "北京市", "上海市", "四川省", "湖北省", "山东省"}
    assert expected <= provinces
    for _, city in CITIES:
        assert 3 <= len(districts_of(city)) <= 6, city
    assert len({(d.city, d.district) for d in DISTRICTS}) == len(DISTRICTS)
    tianhe = next(d for d in DISTRICTS if d.district == "天河区")
    assert (tianhe.province, tianhe.city) == ("广东省", "广州市")
    for d in DISTRICTS:
        assert 18 < d.lat < 54 and 73 < d.lon < 135, d  # inside mainland China


def test_districts_of_same_city_are_close_together():
    for _, city in CITIES:
        ds = districts_of(city)
        for a in ds:
            for b in ds:
                assert haversine_km(a.lat, a.lon, b.lat, b.lon) < 80, (a, b)


# --- customers ---------------------------------------------------------------


def test_same_seed_gives_same_customers():
    assert customers(200, seed=42) == customers(200, seed=42)


def test_different_seed_gives_different_customers():
    a, b = customers(50, seed=1), customers(50, seed=2)
    assert a != b
    assert [c.phone for c in a] != [c.phone for c in b]


def test_is_lazy_and_prefix_stable():
    gen = generate_customers(
        10**9, seed=3, today=TODAY, models_by_category=MODELS, install_required=INSTALL
    )
    first = [next(gen) for _ in range(20)]
    assert first == customers(20, seed=3)


def test_returns_exact_count(many):
    assert len(many) == 5000
    assert customers(0) == []


def test_phones_unique_eleven_digits_valid_prefix(many):
    phones = [c.phone for c in many]
    assert len(set(phones)) == len(phones)
    for phone in phones:
        assert len(phone) == 11 and phone.isdigit(), phone
        assert phone[:3] in VALID_PREFIXES, phone


def test_names_are_two_or_three_chinese_characters(many):
    lengths = Counter()
    for c in many:
        assert 2 <= len(c.name) <= 3, c.name
        assert all("\u4e00" <= ch <= "\u9fff" for ch in c.name), c.name
        lengths[len(c.name)] += 1
    assert lengths[2] > 0 and lengths[3] > 0
    assert len({c.name[0] for c in many}) >= 30


def test_one_to_three_products_from_the_catalogue(many):
    counts = Counter(len(c.products) for c in many)
    assert set(counts) == {1, 2, 3}
    for c in many:
        for p in c.products:
            assert p.model in MODELS[p.category]


def test_serials_unique_and_prefixed_by_model(many):
    serials = [p.serial for c in many for p in c.products]
    assert len(set(serials)) == len(serials)
    for c in many:
        for p in c.products:
            prefix = "".join(ch for ch in p.model if ch.isalnum())[:4].upper()
            assert p.serial.startswith(prefix), (p.model, p.serial)
            tail = p.serial[len(prefix):]
            assert len(tail) == 10 and tail.isalnum() and tail.isascii(), p.serial


def test_installation_dates_only_for_installed_categories_and_in_range(many):
    installed_seen = 0
    for c in many:
        for p in c.products:
            assert p.purchase_date <= TODAY
            if INSTALL[p.category]:
                assert p.installation_date is not None
                assert p.purchase_date <= p.installation_date <= TODAY
                assert (p.installation_date - p.purchase_date).days <= 14
                installed_seen += 1
            else:
                assert p.installation_date is None
    assert installed_seen > 0


def test_installation_capped_at_today_for_very_recent_purchases(many):
    recent = [
        p for c in many for p in c.products
        if INSTALL[p.category] and (TODAY - p.purchase_date).days < 14
    ]
    assert recent, "expected some purchases in the last two weeks"
    assert all(p.installation_date <= TODAY for p in recent)


def test_purchase_dates_within_six_years_and_skewed_recent(many):
    ages = [(TODAY - p.purchase_date).days for c in many for p in c.products]
    assert min(ages) >= 0
    assert max(ages) <= 6 * 366
    recent_half = sum(1 for a in ages if a < 3 * 365)
    assert recent_half > 0.6 * len(ages)


def test_addresses_within_five_km_of_district_centre(many):
    centres = {(d.city, d.district): d for d in DISTRICTS}
    for c in many:
        a = c.address
        assert isinstance(a, Address)
        d = centres[(a.city, a.district)]
        assert a.province == d.province
        assert haversine_km(a.lat, a.lon, d.lat, d.lon) <= 5.0, a
        assert round(a.lat, 6) == a.lat and round(a.lon, 6) == a.lon
        assert a.street and ("路" in a.street or "街" in a.street or "大道" in a.street)
        assert "号" in a.street and "室" in a.street
    assert len({(c.address.city, c.address.district) for c in many}) == len(DISTRICTS)


def test_missing_install_flag_means_no_installation():
    out = list(
        generate_customers(
            100, seed=5, today=TODAY, models_by_category={"电视": ["55E3G"]}, install_required={}
        )
    )
    assert all(p.installation_date is None for c in out for p in c.products)


def test_empty_catalogue_rejected():
    with pytest.raises(ValueError):
        list(
            generate_customers(
                1, seed=1, today=TODAY, models_by_category={}, install_required={}
            )
        )


# --- partners ----------------------------------------------------------------


def covered_pairs(partners: list[PartnerSeed]) -> set[tuple[District, str]]:
    return {(d, cat) for p in partners for d in p.districts for cat in p.categories}


@pytest.mark.parametrize("count", [len(CITIES), len(CITIES) + 1, 60])
def test_partners_cover_every_district_and_category(count):
    partners = generate_partners(count, seed=11, categories=CATEGORIES)
    assert len(partners) == count
    wanted = {(d, cat) for d in DISTRICTS for cat in CATEGORIES}
    assert wanted <= covered_pairs(partners)


def test_partner_shape():
    partners = generate_partners(80, seed=4, categories=CATEGORIES)
    anchors, extra = partners[: len(CITIES)], partners[len(CITIES):]
    for p in partners:
        assert len({d.city for d in p.districts}) == 1, p
        assert 2 <= len(p.districts) <= 6
        assert len(set(p.districts)) == len(p.districts)
        assert set(p.districts) <= set(DISTRICTS)
        assert set(p.categories) <= set(CATEGORIES)
        assert len(set(p.categories)) == len(p.categories)
        assert 5 <= p.daily_capacity <= 40
        assert len(p.contact_phone) == 11 and p.contact_phone[:3] in VALID_PREFIXES
        city_short = p.districts[0].city.removesuffix("市")
        assert p.name.startswith(city_short), p.name
        assert any(k in p.name for k in ("服务", "维修", "安装")), p.name
    for p in extra:
        assert 2 <= len(p.categories) <= 5
    assert {p.districts[0].city for p in anchors} == {city for _, city in CITIES}
    assert len({p.name for p in partners}) == len(partners)
    assert len({p.contact_phone for p in partners}) == len(partners)


def test_partner_name_uses_city_and_district():
    partners = generate_partners(len(CITIES), seed=0, categories=CATEGORIES)
    for p in partners:
        city = p.districts[0].city.removesuffix("市")
        stems = {d.district.removesuffix("区").removesuffix("新") for d in p.districts}
        assert any(p.name.startswith(city + s) for s in stems), p.name


def test_partners_deterministic():
    a = generate_partners(30, seed=9, categories=CATEGORIES)
    assert a == generate_partners(30, seed=9, categories=CATEGORIES)
    assert a != generate_partners(30, seed=10, categories=CATEGORIES)


def test_fewer_partners_than_cities_still_valid():
    partners = generate_partners(3, seed=1, categories=CATEGORIES)
    assert len(partners) == 3
    assert len({p.districts[0].city for p in partners}) == 3
    assert generate_partners(0, seed=1, categories=CATEGORIES) == []


def test_few_categories_clamped():
    partners = generate_partners(40, seed=2, categories=["空调"])
    assert all(p.categories == ("空调",) for p in partners)
    assert {(d, "空调") for d in DISTRICTS} <= covered_pairs(partners)


def test_phone_generator_retries_on_collision():
    # 5,000 draws from ~3.6e9 numbers rarely collide, so force collisions directly.
    from serviceloop import seed_data

    class TinyRandom(seed_data.random.Random):
        def randrange(self, *args, **kwargs):  # only 3 distinct subscriber numbers
            return super().randrange(3)

        def choice(self, seq):
            return seq[0]

    rng, used = TinyRandom(0), set()
    phones = [seed_data._unique_phone(rng, used) for _ in range(3)]
    assert sorted(phones) == ["13000000000", "13000000001", "13000000002"]
