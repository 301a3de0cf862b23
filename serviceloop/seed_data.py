"""Realistic demo customers and service partners, deterministic from a seed.

Everything here is pure: no I/O and no clock reads (the caller passes ``today``).
Names, provinces, cities and districts are the Chinese values the call centre
records (``"广东省"``, ``"广州市"``, ``"天河区"``); coordinates are approximate
district centres (WGS-84, degrees).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class District:
    province: str
    city: str
    district: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Address:
    province: str
    city: str
    district: str
    street: str
    lat: float
    lon: float


@dataclass(frozen=True)
class ProductSeed:
    category: str
    model: str
    serial: str
    purchase_date: date
    installation_date: date | None


@dataclass(frozen=True)
class CustomerSeed:
    name: str
    phone: str
    address: Address
    products: tuple[ProductSeed, ...]


@dataclass(frozen=True)
class PartnerSeed:
    name: str
    districts: tuple[District, ...]
    categories: tuple[str, ...]
    daily_capacity: int
    contact_phone: str


# province -> city -> district -> (lat, lon) of the district centre
_GEOGRAPHY: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "广东省": {
        "广州市": {
            "天河区": (23.1246, 113.3612), "越秀区": (23.1290, 113.2668),
            "海珠区": (23.0835, 113.3172), "白云区": (23.1573, 113.2730),
            "番禺区": (22.9375, 113.3843),
        },
        "深圳市": {
            "福田区": (22.5410, 114.0550), "南山区": (22.5333, 113.9304),
            "罗湖区": (22.5484, 114.1315), "宝安区": (22.5553, 113.8830),
            "龙岗区": (22.7204, 114.2468),
        },
    },
    "浙江省": {
        "杭州市": {
            "西湖区": (30.2595, 120.1300), "上城区": (30.2423, 120.1690),
            "拱墅区": (30.3196, 120.1419), "滨江区": (30.2083, 120.2119),
            "余杭区": (30.4190, 120.3000),
        },
        "宁波市": {
            "海曙区": (29.8597, 121.5505), "江北区": (29.8869, 121.5553),
            "鄞州区": (29.8170, 121.5466), "北仑区": (29.8990, 121.8447),
        },
    },
    "江苏省": {
        "南京市": {
            "玄武区": (32.0507, 118.7979), "秦淮区": (32.0391, 118.7946),
            "鼓楼区": (32.0663, 118.7698), "建邺区": (32.0034, 118.7318),
            "江宁区": (31.9536, 118.8399),
        },
        "苏州市": {
            "姑苏区": (31.3116, 120.6178), "虎丘区": (31.2951, 120.5669),
            "吴中区": (31.2626, 120.6322), "相城区": (31.3690, 120.6421),
            "吴江区": (31.1387, 120.6451),
        },
    },
    "北京市": {
        "北京市": {
            "朝阳区": (39.9215, 116.4431), "海淀区": (39.9593, 116.2981),
            "东城区": (39.9288, 116.4160), "西城区": (39.9123, 116.3660),
            "丰台区": (39.8585, 116.2870), "通州区": (39.9095, 116.6566),
        },
    },
    "上海市": {
        "上海市": {
            "浦东新区": (31.2215, 121.5447), "徐汇区": (31.1885, 121.4365),
            "静安区": (31.2290, 121.4482), "黄浦区": (31.2317, 121.4846),
            "闵行区": (31.1130, 121.3817), "长宁区": (31.2204, 121.4243),
        },
    },
    "四川省": {
        "成都市": {
            "锦江区": (30.5985, 104.0831), "青羊区": (30.6742, 104.0617),
            "武侯区": (30.6422, 104.0432), "成华区": (30.6600, 104.1016),
            "金牛区": (30.6914, 104.0520),
        },
    },
    "湖北省": {
        "武汉市": {
            "江岸区": (30.5997, 114.3095), "武昌区": (30.5536, 114.3160),
            "洪山区": (30.5006, 114.3437), "江汉区": (30.6013, 114.2708),
            "汉阳区": (30.5541, 114.2184),
        },
    },
    "山东省": {
        "青岛市": {
            "市南区": (36.0671, 120.4123), "市北区": (36.0875, 120.3748),
            "崂山区": (36.1072, 120.4686), "黄岛区": (35.9605, 120.1981),
            "李沧区": (36.1455, 120.4328),
        },
        "济南市": {
            "历下区": (36.6664, 117.0766), "市中区": (36.6510, 116.9976),
            "槐荫区": (36.6513, 116.9010), "天桥区": (36.6782, 116.9870),
            "历城区": (36.6809, 117.0651),
        },
    },
    "湖南省": {
        "长沙市": {
            "岳麓区": (28.2351, 112.9313), "芙蓉区": (28.1852, 113.0321),
            "天心区": (28.1146, 112.9900), "开福区": (28.2557, 112.9858),
            "雨花区": (28.1354, 113.0381),
        },
    },
}

DISTRICTS: list[District] = [
    District(province, city, district, lat, lon)
    for province, cities in _GEOGRAPHY.items()
    for city, districts in cities.items()
    for district, (lat, lon) in districts.items()
]

#: (province, city) pairs, in table order.
CITIES: tuple[tuple[str, str], ...] = tuple(
    (province, city) for province, cities in _GEOGRAPHY.items() for city in cities
)

# The most common surnames, each with a rough relative frequency (per cent of population).
_SURNAMES: tuple[tuple[str, float], ...] = (
    ("王", 7.1), ("李", 7.0), ("张", 6.7), ("刘", 5.4), ("陈", 4.5), ("杨", 3.1),
    ("黄", 2.2), ("赵", 2.0), ("吴", 1.8), ("周", 1.7), ("徐", 1.3), ("孙", 1.2),
    ("马", 1.1), ("朱", 1.1), ("胡", 1.0), ("郭", 1.0), ("何", 0.9), ("高", 0.9),
    ("林", 0.9), ("罗", 0.9), ("郑", 0.8), ("梁", 0.8), ("谢", 0.6), ("宋", 0.6),
    ("唐", 0.5), ("许", 0.5), ("韩", 0.5), ("冯", 0.5), ("邓", 0.5), ("曹", 0.5),
    ("彭", 0.4), ("曾", 0.4), ("肖", 0.4), ("田", 0.4), ("董", 0.4), ("袁", 0.4),
    ("潘", 0.4), ("于", 0.4), ("蒋", 0.4), ("蔡", 0.3), ("余", 0.3), ("杜", 0.3),
)
SURNAMES: tuple[str, ...] = tuple(s for s, _ in _SURNAMES)
_SURNAME_WEIGHTS: tuple[float, ...] = tuple(w for _, w in _SURNAMES)

GIVEN_NAME_CHARS: str = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英霞平刚桂兰华建国志红玉梅"
    "文辉鹏飞宇浩然晨阳欣怡婷雪琳佳俊凯子轩梓涵思雨晓东海波斌丹萍亮"
    "鑫帆宁颖慧嘉琪瑶博昊天"
)

_STREET_STEMS: tuple[str, ...] = (
    "中山", "人民", "解放", "建设", "和平", "新华", "胜利", "东风", "文化", "光明",
    "学府", "科技", "滨江", "江南", "长江", "黄河", "青年", "振兴", "友谊", "幸福",
    "花园", "工业", "环城", "迎宾", "延安", "五一", "体育", "世纪", "金融", "湖滨",
)
_STREET_SUFFIXES: tuple[str, ...] = ("路", "路", "路", "街", "大道", "东路", "西路", "北路")

#: Real mainland mobile number prefixes (first three digits).
MOBILE_PREFIXES: tuple[str, ...] = tuple(
    [str(p) for p in range(130, 140)]
    + ["145", "147", "150", "151", "152", "153", "155", "156", "157", "158", "159", "166"]
    + ["173", "175", "176", "177", "178"]
    + [str(p) for p in range(180, 190)]
    + ["191", "198", "199"]
)

_PARTNER_KINDS: tuple[str, ...] = (
    "家电维修服务部", "安装服务中心", "家电售后服务站", "电器维修部",
    "家电服务有限公司", "制冷设备维修中心", "家电安装维修站",
)

_SERIAL_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I/O: they read as 1/0
_MAX_PURCHASE_AGE_DAYS = 6 * 365
_JITTER_METRES = 3000.0
_METRES_PER_DEGREE_LAT = 111_320.0


def districts_of(city: str) -> list[District]:
    """All districts of ``city`` (e.g. ``"杭州市"``), in table order."""
    return [d for d in DISTRICTS if d.city == city]


def _random_name(rng: random.Random) -> str:
    surname = rng.choices(SURNAMES, weights=_SURNAME_WEIGHTS)[0]
    given_len = 2 if rng.random() < 0.75 else 1
    return surname + "".join(rng.choice(GIVEN_NAME_CHARS) for _ in range(given_len))


def _unique_phone(rng: random.Random, used: set[str]) -> str:
    while True:
        phone = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        if phone not in used:
            used.add(phone)
            return phone


def _street(rng: random.Random) -> str:
    road = rng.choice(_STREET_STEMS) + rng.choice(_STREET_SUFFIXES)
    number = rng.randint(1, 999)
    floor = rng.randint(1, 33)
    unit = f"{rng.randint(1, 30)}栋{rng.randint(1, 4)}单元{floor}{rng.randint(1, 6):02d}室"
    return f"{road}{number}号{unit}"


def _jitter(rng: random.Random, lat: float, lon: float) -> tuple[float, float]:
    """A point uniformly distributed within ``_JITTER_METRES`` of (lat, lon)."""
    radius = _JITTER_METRES * math.sqrt(rng.random())
    bearing = rng.uniform(0.0, 2.0 * math.pi)
    dlat = radius * math.cos(bearing) / _METRES_PER_DEGREE_LAT
    dlon = radius * math.sin(bearing) / (_METRES_PER_DEGREE_LAT * math.cos(math.radians(lat)))
    return round(lat + dlat, 6), round(lon + dlon, 6)


def _address(rng: random.Random) -> Address:
    d = rng.choice(DISTRICTS)
    lat, lon = _jitter(rng, d.lat, d.lon)
    return Address(d.province, d.city, d.district, _street(rng), lat, lon)


def _serial_prefix(model: str) -> str:
    alnum = "".join(ch for ch in model.upper() if ch.isascii() and ch.isalnum())
    return alnum[:4] or "SN"


def _unique_serial(rng: random.Random, model: str, used: set[str]) -> str:
    prefix = _serial_prefix(model)
    while True:
        serial = prefix + "".join(rng.choice(_SERIAL_ALPHABET) for _ in range(10))
        if serial not in used:
            used.add(serial)
            return serial


def _purchase_date(rng: random.Random, today: date) -> date:
    # Triangular with its mode at 0 days ago: recent purchases are the most common.
    days_ago = int(rng.triangular(0, _MAX_PURCHASE_AGE_DAYS, 0))
    return today - timedelta(days=days_ago)


def generate_customers(
    count: int,
    *,
    seed: int,
    today: date,
    models_by_category: dict[str, list[str]],
    install_required: dict[str, bool],
) -> Iterator[CustomerSeed]:
    """Yield ``count`` demo customers, each owning 1-3 products.

    Products are drawn from ``models_by_category``; serials are the model's first
    four ASCII letters/digits plus 10 random characters, unique within the run,
    as are phone numbers. Purchases fall within the last ~6 years (skewed to
    recent); a category with ``install_required[category]`` true (missing means
    false) gets an installation 0-14 days after purchase, never after ``today``.
    The same arguments always yield the same sequence.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    categories = [c for c, models in models_by_category.items() if models]
    if count and not categories:
        raise ValueError("models_by_category has no category with models")
    rng = random.Random(f"serviceloop.customers:{seed}")
    phones: set[str] = set()
    serials: set[str] = set()
    for _ in range(count):
        name = _random_name(rng)
        phone = _unique_phone(rng, phones)
        address = _address(rng)
        n_products = rng.choices((1, 2, 3), weights=(55, 30, 15))[0]
        products = []
        for _ in range(n_products):
            category = rng.choice(categories)
            model = rng.choice(models_by_category[category])
            serial = _unique_serial(rng, model, serials)
            purchased = _purchase_date(rng, today)
            installed: date | None = None
            if install_required.get(category, False):
                installed = min(purchased + timedelta(days=rng.randint(0, 14)), today)
            products.append(ProductSeed(category, model, serial, purchased, installed))
        yield CustomerSeed(name, phone, address, tuple(products))


def _short_place(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix)]
    return name


def _partner_name(rng: random.Random, city: str, anchor: District, used: set[str]) -> str:
    base = _short_place(city, ("市",)) + _short_place(anchor.district, ("新区", "区"))
    kinds = list(_PARTNER_KINDS)
    rng.shuffle(kinds)
    for kind in kinds:
        if base + kind not in used:
            used.add(base + kind)
            return base + kind
    branch = 2
    while f"{base}{kinds[0]}第{branch}分部" in used:
        branch += 1
    name = f"{base}{kinds[0]}第{branch}分部"
    used.add(name)
    return name


def generate_partners(count: int, *, seed: int, categories: list[str]) -> list[PartnerSeed]:
    """``count`` service partners, each covering 2-6 districts of one city.

    Coverage: when ``count >= len(CITIES)`` the first ``len(CITIES)`` partners
    are city anchors, one per city in table order, each covering all of that
    city's districts and qualified for every category in ``categories``; so
    every (district, category) pair has at least one partner. The remaining
    partners pick a random city, 2-6 of its districts and 2-5 categories
    (fewer if ``categories`` is shorter). With ``count < len(CITIES)`` the
    anchors go to a random subset of cities and coverage is partial.
    Names are like "广州天河家电维修服务部", unique; contact phones are unique.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if count and not categories:
        raise ValueError("categories must not be empty")
    cats = list(dict.fromkeys(categories))
    rng = random.Random(f"serviceloop.partners:{seed}")
    names: set[str] = set()
    phones: set[str] = set()

    anchor_cities = [city for _, city in CITIES]
    if count < len(anchor_cities):
        anchor_cities = rng.sample(anchor_cities, count)

    partners: list[PartnerSeed] = []
    for city in anchor_cities:
        covered = tuple(districts_of(city))
        partners.append(
            PartnerSeed(
                name=_partner_name(rng, city, rng.choice(covered), names),
                districts=covered,
                categories=tuple(cats),
                daily_capacity=rng.randint(20, 40),
                contact_phone=_unique_phone(rng, phones),
            )
        )
    for _ in range(count - len(partners)):
        _, city = rng.choice(CITIES)
        in_city = districts_of(city)
        n_districts = rng.randint(min(2, len(in_city)), min(6, len(in_city)))
        covered = tuple(sorted(rng.sample(in_city, n_districts), key=in_city.index))
        n_cats = rng.randint(min(2, len(cats)), min(5, len(cats)))
        qualified = tuple(sorted(rng.sample(cats, n_cats), key=cats.index))
        partners.append(
            PartnerSeed(
                name=_partner_name(rng, city, covered[0], names),
                districts=covered,
                categories=qualified,
                daily_capacity=rng.randint(5, 40),
                contact_phone=_unique_phone(rng, phones),
            )
        )
    return partners
