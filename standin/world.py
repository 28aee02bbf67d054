"""The seeded world behind the stand-in: groups, members, events and venues.

Every entity is derived from (seed, kind, index) alone, so the world needs no
table: an id maps back to its index by arithmetic, and the same seed always gives
the same world. Members belong to groups (group g holds the members g*20 to
g*20+39), events belong to groups and take place at venues in their group's city,
and the organizer of a group is one of its members. Every member and group id a
stream item carries therefore resolves through the profile API.

Stream items are built from pre-serialized fragments (a group as rsvps show it, a
member as photos show it, ...) that are cached here, so that generating an item
costs a string format, not a JSON encoding.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

GROUP_COUNT = 1500
MEMBERS_PER_GROUP = 40
MEMBER_STRIDE = 20  # group g holds members g*20 .. g*20+39: each member is in two
MEMBER_COUNT = GROUP_COUNT * MEMBER_STRIDE
EVENT_COUNT = 6000
VENUE_COUNT = 2500

GROUP_ID_BASE, GROUP_ID_STRIDE = 1_800_000, 1_009
MEMBER_ID_BASE, MEMBER_ID_STRIDE = 2_000_000, 2_731
EVENT_ID_BASE, EVENT_ID_STRIDE = 240_000_000, 17
VENUE_ID_BASE, VENUE_ID_STRIDE = 23_000_000, 397
PHOTO_ID_BASE, PHOTO_ID_STRIDE = 86_000_000, 7

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

PHOTO_HOST = "https://secure.meetupstatic.com/photos"


@dataclass(frozen=True, slots=True)
class City:
    name: str
    slug: str
    country: str  # lower-case ISO 3166 alpha-2, as the streams spell it
    state: str | None  # only the US and Canada have one
    lat: float
    lon: float
    timezone: str
    utc_offset: int  # ms
    street: str
    zip_code: str


# About a third of the cities are in the US or Canada, so that `group_state` is
# present in roughly the share of RSVPs the real captures show.
# fmt: off
CITIES = (
    City("New York", "NYC", "us", "NY", 40.71, -74.01, "US/Eastern", -18000000,
         "Broadway", "10012"),
    City("San Francisco", "SF", "us", "CA", 37.77, -122.42, "US/Pacific",
         -28800000, "Market St", "94103"),
    City("Chicago", "Chicago", "us", "IL", 41.88, -87.63, "US/Central", -21600000,
         "Wabash Ave", "60605"),
    City("Austin", "Austin", "us", "TX", 30.27, -97.74, "US/Central", -21600000,
         "Congress Ave", "78701"),
    City("Kansas City", "KC", "us", "MO", 39.04, -94.59, "US/Central", -21600000,
         "Main St", "64105"),
    City("Seattle", "Seattle", "us", "WA", 47.61, -122.33, "US/Pacific", -28800000,
         "Pike St", "98101"),
    City("Toronto", "Toronto", "ca", "ON", 43.68, -79.38, "Canada/Eastern",
         -18000000, "Queen St W", "M5V 2A5"),
    City("Vancouver", "Vancouver", "ca", "BC", 49.28, -123.12, "Canada/Pacific",
         -28800000, "Granville St", "V6C 1T2"),
    City("London", "London", "gb", None, 51.51, -0.13, "Europe/London", 0,
         "Old Street", "EC1V 9HX"),
    City("Manchester", "Manchester", "gb", None, 53.48, -2.24, "Europe/London", 0,
         "Deansgate", "M3 4LZ"),
    City("Berlin", "Berlin", "de", None, 52.52, 13.40, "Europe/Berlin", 3600000,
         "Torstraße", "10119"),
    City("München", "Munich", "de", None, 48.14, 11.58, "Europe/Berlin", 3600000,
         "Leopoldstraße", "80802"),
    City("Paris", "Paris", "fr", None, 48.86, 2.35, "Europe/Paris", 3600000,
         "Rue de Rivoli", "75004"),
    City("Amsterdam", "Amsterdam", "nl", None, 52.37, 4.90, "Europe/Amsterdam",
         3600000, "Damrak", "1012 LP"),
    City("Madrid", "Madrid", "es", None, 40.42, -3.70, "Europe/Madrid", 3600000,
         "Gran Vía", "28013"),
    City("Milano", "Milan", "it", None, 45.46, 9.19, "Europe/Rome", 3600000,
         "Via Torino", "20123"),
    City("Kraków", "Krakow", "pl", None, 50.06, 19.94, "Europe/Warsaw", 3600000,
         "Floriańska", "31-019"),
    City("Stockholm", "Stockholm", "se", None, 59.33, 18.07, "Europe/Stockholm",
         3600000, "Drottninggatan", "111 51"),
    City("Sydney", "Sydney", "au", None, -33.87, 151.21, "Australia/Sydney",
         36000000, "George St", "2000"),
    City("Melbourne", "Melbourne", "au", None, -37.81, 144.96,
         "Australia/Melbourne", 36000000, "Swanston St", "3000"),
    City("Tokyo", "Tokyo", "jp", None, 35.68, 139.69, "Asia/Tokyo", 32400000,
         "Shibuya", "150-0002"),
    City("Bangalore", "Bangalore", "in", None, 12.97, 77.59, "Asia/Kolkata",
         19800000, "MG Road", "560001"),
    City("São Paulo", "SaoPaulo", "br", None, -23.55, -46.63, "America/Sao_Paulo",
         -10800000, "Avenida Paulista", "01310-100"),
    City("Singapore", "Singapore", "sg", None, 1.29, 103.85, "Asia/Singapore",
         28800000, "Orchard Rd", "238859"),
    City("Ciudad de México", "CDMX", "mx", None, 19.43, -99.13,
         "America/Mexico_City", -21600000, "Paseo de la Reforma", "06600"),
    City("Lagos", "Lagos", "ng", None, 6.52, 3.38, "Africa/Lagos", 3600000,
         "Awolowo Rd", "101233"),
)
# fmt: on

# (id, shortname, name): Meetup's v2 category names were lower case.
CATEGORIES = (
    (34, "tech", "tech"),
    (31, "socializing", "socializing"),
    (23, "outdoors-adventure", "outdoors/adventure"),
    (11, "games", "games"),
    (27, "photography", "photography"),
    (16, "language", "language/ethnic identity"),
    (9, "fitness", "fitness"),
    (2, "career-business", "career/business"),
    (14, "health-wellbeing", "health/wellbeing"),
    (18, "book-clubs", "book clubs"),
    (10, "food-drink", "food & drink"),
    (21, "music", "music"),
)

# (id, urlkey, name, index into CATEGORIES, what the members call themselves)
TOPICS = (
    (1040, "ruby", "Ruby", 0, "Rubyists"),
    (1513, "python", "Python", 0, "Pythonistas"),
    (1488, "agile", "Agile Software", 0, "Agilists"),
    (3833, "softwaredev", "Software Development", 0, "Developers"),
    (17635, "data-science", "Data Science", 0, "Data people"),
    (19882, "ux-design", "UX Design", 0, "Designers"),
    (9696, "newintown", "New In Town", 1, "Newcomers"),
    (10581, "social", "Social", 1, "Friends"),
    (15046, "hiking", "Hiking", 2, "Hikers"),
    (5712, "cycling", "Cycling", 2, "Cyclists"),
    (563, "boardgames", "Board Games", 3, "Gamers"),
    (1201, "photo", "Photography", 4, "Photographers"),
    (9625, "language", "Language & Culture", 5, "Speakers"),
    (4422, "running", "Running", 6, "Runners"),
    (10209, "yoga", "Yoga", 6, "Yogis"),
    (15582, "startups", "Startups", 7, "Founders"),
    (2260, "mindfulness", "Mindfulness", 8, "Members"),
    (242, "bookclub", "Book Club", 9, "Readers"),
    (7029, "cooking", "Cooking", 10, "Cooks"),
    (3880, "music", "Music", 11, "Musicians"),
)

FIRST_NAMES = (
    "Nick", "Troy", "Maria", "Aisha", "Chen", "Priya", "Lukas", "Sofia", "José",
    "Zoë", "Olu", "Hana", "Mateo", "Ingrid", "Ravi", "Emma", "Kofi", "Yuki", "Liam",
    "Fatima", "Noah", "Camille", "Diego", "Anya", "Sven", "Mei", "Omar", "Grace",
    "Tomás", "Leila", "Jonas", "Amara", "Kenji", "Elena", "Sam", "Ada", "Björn",
    "Nadia", "Ivan", 'Robert "Bob"',
)  # fmt: skip
LAST_NAMES = (
    "T", "Smith", "García", "Nguyen", "Müller", "Okafor", "Kowalski", "Rossi",
    "Tanaka", "Silva", "Dubois", "Cohen", "Patel", "Jensen", "O'Brien", "Kim",
    "Novak", "Haddad", "Andersson", "Moreau", "B.", "L.",
)  # fmt: skip
GROUP_PATTERNS = (
    "{city} {topic} Meetup",
    "{topic} Enthusiasts of {city}",
    "Try New Things in {city}!",
    "{city} {topic} Club",
    "The {city} {topic} Collective",
    "{topic} & Friends / {city}",
)
EVENT_PATTERNS = (
    "{topic} night",
    "Monthly {topic} meetup",
    "{topic}: talks and drinks",
    "Beginners' {topic} workshop",
    "{topic} Q&A / networking",
    "Weekend {topic} session",
    "Nerf Wars! ({topic} edition)",
)
VENUE_PATTERNS = (
    "{surname}'s Pub",
    "The Hub {city}",
    "Archers Arena",
    "{city} Community Center",
    "Café {surname}",
    "Impact Hub {city}",
    "{surname} & Co. Coworking",
    "Central Library, Room 2",
)
COMMENTS = (
    "See you all there!",
    "Is there parking nearby?",
    "Running 10 minutes late, save me a seat :)",
    "Thanks for organising, that was great.",
    "Can I bring a friend?",
    "Slides: https://example.com/slides/talk.pdf",
    "Where exactly do we meet? Front door / lobby?",
    "Sorry, can't make it this time.",
    "Looking forward to it! 🎉",
    'Does "beginner friendly" mean no experience at all?',
    "The venue changed, check the event page.",
    "Great turnout tonight, 40+ people!",
)
CAPTIONS = (
    "Group photo",
    "The speakers",
    "After the talk",
    "Sunset from the trail",
    "Our table at the pub",
    "Workshop in progress",
    "Prize draw / raffle",
    "Café crème time",
)

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def to_json(value: Any, escape_slashes: bool) -> str:
    """Compact JSON; with escape_slashes every "/" is written "\\/", as Meetup did.

    A "/" never appears in JSON outside a string, so replacing it everywhere keeps
    the text valid and means the same.
    """
    text = _ENCODER.encode(value)
    return text.replace("/", "\\/") if escape_slashes else text


def _salt(seed: int, kind: str) -> int:
    digest = hashlib.sha256(f"{seed}/{kind}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _spread(index: int, stride: int, salt: int) -> int:
    """A deterministic offset in [0, stride), so ids are not evenly spaced."""
    return ((index * 2654435761 + salt) >> 7) % stride


def _photo_links(photo_id: int, kind: str) -> dict[str, Any]:
    hexa = f"{photo_id:08x}"
    path = f"{PHOTO_HOST}/{kind}/{hexa[-1]}/{hexa[-2]}/{hexa[-3]}/{hexa[-4]}"
    return {
        "photo_id": photo_id,
        "photo_link": f"{path}/member_{photo_id}.jpeg",
        "highres_link": f"{path}/highres_{photo_id}.jpeg",
        "thumb_link": f"{path}/thumb_{photo_id}.jpeg",
    }


@dataclass(frozen=True, slots=True)
class Group:
    index: int
    id: int
    name: str
    urlname: str
    city: City
    lat: float
    lon: float
    join_mode: str
    category: tuple[int, str, str]
    topics: tuple[tuple[int, str, str, int, str], ...]
    created: int
    member_count: int
    rating: float
    photo_id: int
    organizer_index: int


@dataclass(frozen=True, slots=True)
class Member:
    index: int
    id: int
    name: str
    city: City
    lat: float
    lon: float
    joined: int
    visited: int
    bio: str | None
    photo_id: int | None
    topics: tuple[tuple[int, str, str, int, str], ...]
    twitter: str | None
    hometown: str | None


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    numeric_id: int
    alphanumeric_id: str | None  # recurring events have one
    group_index: int
    venue_index: int
    name: str
    description: str
    time: int
    duration: int | None  # absent means 3 hours
    created: int
    rsvp_limit: int | None
    fee: tuple[float, str] | None
    venue_visibility: str
    album_id: int


@dataclass(frozen=True, slots=True)
class Venue:
    index: int
    id: int
    name: str
    address_1: str
    address_2: str | None
    address_3: str | None
    city: City
    zip_code: str
    lat: float
    lon: float
    phone: str | None
    mtime: int


class World:
    """Groups, members, events and venues of one seed, built lazily and cached."""

    def __init__(self, seed: int, epoch_ms: int) -> None:
        self.seed = seed
        self.epoch_ms = epoch_ms
        self._group_salt = _salt(seed, "group")
        self._member_salt = _salt(seed, "member")
        self._event_salt = _salt(seed, "event")
        self._venue_salt = _salt(seed, "venue")
        self._groups: list[Group | None] = [None] * GROUP_COUNT
        self._members: list[Member | None] = [None] * MEMBER_COUNT
        self._events: list[Event | None] = [None] * EVENT_COUNT
        self._venues: list[Venue | None] = [None] * VENUE_COUNT
        self._fragments: dict[tuple[Any, ...], bytes] = {}

    # ids <-> indexes

    def group_id(self, index: int) -> int:
        return (
            GROUP_ID_BASE
            + index * GROUP_ID_STRIDE
            + _spread(index, GROUP_ID_STRIDE, self._group_salt)
        )

    def member_id(self, index: int) -> int:
        return (
            MEMBER_ID_BASE
            + index * MEMBER_ID_STRIDE
            + _spread(index, MEMBER_ID_STRIDE, self._member_salt)
        )

    def group_index(self, group_id: int) -> int | None:
        index = (group_id - GROUP_ID_BASE) // GROUP_ID_STRIDE
        if 0 <= index < GROUP_COUNT and self.group_id(index) == group_id:
            return index
        return None

    def member_index(self, member_id: int) -> int | None:
        index = (member_id - MEMBER_ID_BASE) // MEMBER_ID_STRIDE
        if 0 <= index < MEMBER_COUNT and self.member_id(index) == member_id:
            return index
        return None

    def group_member(self, group_index: int, slot: int) -> int:
        """The index of the slot-th of the group's members (slot < 40)."""
        return (group_index * MEMBER_STRIDE + slot) % MEMBER_COUNT

    def venue_in_city(self, city_index: int, pick: int) -> int:
        per_city = VENUE_COUNT // len(CITIES)
        return city_index + len(CITIES) * (pick % per_city)

    # entities

    def group(self, index: int) -> Group:
        group = self._groups[index]
        if group is None:
            group = self._groups[index] = self._make_group(index)
        return group

    def member(self, index: int) -> Member:
        member = self._members[index]
        if member is None:
            member = self._members[index] = self._make_member(index)
        return member

    def event(self, index: int) -> Event:
        event = self._events[index]
        if event is None:
            event = self._events[index] = self._make_event(index)
        return event

    def venue(self, index: int) -> Venue:
        venue = self._venues[index]
        if venue is None:
            venue = self._venues[index] = self._make_venue(index)
        return venue

    def _rng(self, kind: str, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{kind}/{index}")

    def _make_group(self, index: int) -> Group:
        rng = self._rng("group", index)
        city = CITIES[index % len(CITIES)]
        topics = tuple(rng.sample(TOPICS, rng.randint(1, 4)))
        main = topics[0]
        name = rng.choice(GROUP_PATTERNS).format(city=city.name, topic=main[2])
        urlname = f"{city.slug}-{main[1].title().replace('-', '')}-{index}"
        return Group(
            index=index,
            id=self.group_id(index),
            name=name,
            urlname=urlname,
            city=city,
            lat=round(city.lat + rng.uniform(-0.05, 0.05), 2),
            lon=round(city.lon + rng.uniform(-0.05, 0.05), 2),
            join_mode="approval" if rng.random() < 0.2 else "open",
            category=CATEGORIES[main[3]],
            topics=topics,
            created=self.epoch_ms - rng.randint(100, 4000) * DAY_MS,
            member_count=MEMBERS_PER_GROUP + rng.randint(0, 3000),
            rating=round(rng.uniform(3.5, 5.0), 2),
            photo_id=PHOTO_ID_BASE + index * PHOTO_ID_STRIDE,
            organizer_index=self.group_member(index, 0),
        )

    def _make_member(self, index: int) -> Member:
        rng = self._rng("member", index)
        home = self.group(index // MEMBER_STRIDE % GROUP_COUNT)
        first = rng.choice(FIRST_NAMES)
        joined = home.created + rng.randint(0, 90) * DAY_MS
        has_photo = rng.random() >= 0.034
        return Member(
            index=index,
            id=self.member_id(index),
            name=f"{first} {rng.choice(LAST_NAMES)}",
            city=home.city,
            lat=home.lat,
            lon=home.lon,
            joined=joined,
            visited=self.epoch_ms - rng.randint(0, 60) * DAY_MS,
            bio=(
                f"Into {rng.choice(TOPICS)[2].lower()}; say hi!"
                if rng.random() < 0.5
                else None
            ),
            photo_id=_member_photo_id(index) if has_photo else None,
            topics=tuple(rng.sample(TOPICS, rng.randint(0, 3))),
            twitter=(
                f"@{first.split()[0].lower()}{index}" if rng.random() < 0.069 else None
            ),
            hometown=rng.choice(CITIES).name if rng.random() < 0.3 else None,
        )

    def _make_event(self, index: int) -> Event:
        rng = self._rng("event", index)
        group_index = rng.randrange(GROUP_COUNT)
        group = self.group(group_index)
        numeric_id = (
            EVENT_ID_BASE
            + index * EVENT_ID_STRIDE
            + _spread(index, EVENT_ID_STRIDE, self._event_salt)
        )
        recurring = rng.random() < 0.31
        topic = group.topics[0][2]
        paid = rng.random() < 0.15
        return Event(
            index=index,
            numeric_id=numeric_id,
            alphanumeric_id=_alphanumeric_id(numeric_id) if recurring else None,
            group_index=group_index,
            venue_index=self.venue_in_city(
                group_index % len(CITIES), rng.randrange(97)
            ),
            name=rng.choice(EVENT_PATTERNS).format(topic=topic),
            description=(
                f"<p>Join {group.name} for an evening of {topic.lower()}.</p>"
                f'<p>Details: <a href="https://www.meetup.com/{group.urlname}/">'
                "our page</a></p>"
            ),
            time=(self.epoch_ms // HOUR_MS + rng.randint(24, 60 * 24)) * HOUR_MS,
            duration=rng.choice((2, 3, 4)) * HOUR_MS if rng.random() < 0.7 else None,
            created=self.epoch_ms - rng.randint(1, 60) * DAY_MS,
            rsvp_limit=rng.choice((20, 40, 60, 100)) if rng.random() < 0.4 else None,
            fee=(rng.choice((5.0, 10.0, 15.0)), "USD") if paid else None,
            venue_visibility="members" if rng.random() < 0.1 else "public",
            album_id=30_000_000 + index,
        )

    def _make_venue(self, index: int) -> Venue:
        rng = self._rng("venue", index)
        city = CITIES[index % len(CITIES)]
        surname = rng.choice(LAST_NAMES[1:])
        return Venue(
            index=index,
            id=VENUE_ID_BASE
            + index * VENUE_ID_STRIDE
            + _spread(index, VENUE_ID_STRIDE, self._venue_salt),
            name=rng.choice(VENUE_PATTERNS).format(city=city.name, surname=surname),
            address_1=f"{rng.randint(1, 400)} {city.street}",
            address_2=f"Floor {rng.randint(1, 9)}" if rng.random() < 0.3 else None,
            address_3="c/o reception" if rng.random() < 0.05 else None,
            city=city,
            zip_code=city.zip_code,
            lat=round(city.lat + rng.uniform(-0.08, 0.08), 6),
            lon=round(city.lon + rng.uniform(-0.08, 0.08), 6),
            phone=(
                f"+{rng.randint(1, 99)} {rng.randint(100, 999)} "
                f"{rng.randint(1000, 9999)}"
                if rng.random() < 0.6
                else None
            ),
            mtime=self.epoch_ms - rng.randint(1, 2000) * DAY_MS + rng.randrange(DAY_MS),
        )

    # event ids as the streams show them

    def event_shown_id(self, event: Event, alphanumeric: bool) -> str:
        if alphanumeric and event.alphanumeric_id is not None:
            return event.alphanumeric_id
        return str(event.numeric_id)

    def event_url(self, event: Event) -> str:
        urlname = self.group(event.group_index).urlname
        return f"https://www.meetup.com/{urlname}/events/{event.numeric_id}/"

    # pre-serialized fragments of stream items (bytes, cached)

    def fragment(self, kind: str, index: int, variant: Any, escape: bool) -> bytes:
        key = (kind, index, variant, escape)
        cached = self._fragments.get(key)
        if cached is None:
            value = _FRAGMENT_BUILDERS[kind](self, index, variant)
            cached = self._fragments[key] = to_json(value, escape).encode()
        return cached

    def _rsvp_group(self, index: int, _variant: Any) -> dict[str, Any]:
        group = self.group(index)
        fields: dict[str, Any] = {
            "group_topics": [
                {"urlkey": urlkey, "topic_name": name}
                for _id, urlkey, name, _cat, _who in group.topics
            ],
            "group_city": group.city.name,
            "group_country": group.city.country,
            "group_id": group.id,
            "group_name": group.name,
            "group_lon": group.lon,
            "group_urlname": group.urlname,
        }
        if group.city.state is not None:
            fields["group_state"] = group.city.state
        fields["group_lat"] = group.lat
        return fields

    def _category(self, group: Group) -> dict[str, Any]:
        category_id, shortname, name = group.category
        return {"id": category_id, "name": name, "shortname": shortname}

    def _group_photo(self, group: Group) -> dict[str, Any]:
        return _photo_links(group.photo_id, "event")

    def _event_group(self, index: int, _variant: Any) -> dict[str, Any]:
        group = self.group(index)
        fields: dict[str, Any] = {
            "id": group.id,
            "name": group.name,
            "urlname": group.urlname,
            "city": group.city.name,
            "country": group.city.country,
        }
        if group.city.state is not None:
            fields["state"] = group.city.state
        fields.update(
            join_mode=group.join_mode,
            group_lat=group.lat,
            group_lon=group.lon,
            category=self._category(group),
            group_photo=self._group_photo(group),
        )
        return fields

    def _comment_group(self, index: int, _variant: Any) -> dict[str, Any]:
        group = self.group(index)
        return {
            "id": group.id,
            "name": group.name,
            "urlname": group.urlname,
            "join_mode": group.join_mode,
            "group_lat": group.lat,
            "group_lon": group.lon,
            "category": self._category(group),
            "group_photo": self._group_photo(group),
        }

    def _photo_group(self, index: int, _variant: Any) -> dict[str, Any]:
        group = self.group(index)
        fields: dict[str, Any] = {
            "id": group.id,
            "name": group.name,
            "urlname": group.urlname,
            "city": group.city.name,
            "country": group.city.country,
        }
        if group.city.state is not None:
            fields["state"] = group.city.state
        fields.update(
            group_lat=group.lat,
            group_lon=group.lon,
            join_mode=group.join_mode,
            group_topics=[
                {"urlkey": urlkey, "topic_name": name}
                for _id, urlkey, name, _cat, _who in group.topics
            ],
        )
        return fields

    def _rsvp_member(self, index: int, with_photo: bool) -> dict[str, Any]:
        member = self.member(index)
        fields: dict[str, Any] = {"member_id": member.id}
        if with_photo:
            fields["photo"] = self._member_thumb(member)
        fields["member_name"] = member.name
        if member.twitter is not None:
            fields["other_services"] = {"twitter": {"identifier": member.twitter}}
        return fields

    def _comment_member(self, index: int, with_photo: bool) -> dict[str, Any]:
        member = self.member(index)
        fields: dict[str, Any] = {"member_id": member.id, "member_name": member.name}
        if with_photo:
            fields["photo"] = self._member_thumb(member)
        return fields

    def _member_thumb(self, member: Member) -> str:
        """The member's thumbnail; one is made up for the few without a photo
        when a stream shows every optional field."""
        photo_id = member.photo_id or _member_photo_id(member.index)
        return _photo_links(photo_id, "member")["thumb_link"]

    def _photo_member(self, index: int, _variant: Any) -> dict[str, Any]:
        member = self.member(index)
        return {"member_id": member.id, "name": member.name}

    def _rsvp_event(self, index: int, variant: tuple[bool, bool]) -> dict[str, Any]:
        with_time, alphanumeric = variant
        event = self.event(index)
        fields: dict[str, Any] = {
            "event_name": event.name,
            "event_id": self.event_shown_id(event, alphanumeric),
        }
        if with_time:
            fields["time"] = event.time
        fields["event_url"] = self.event_url(event)
        return fields

    def _rsvp_venue(self, index: int, _variant: Any) -> dict[str, Any]:
        venue = self.venue(index)
        return {
            "venue_name": venue.name,
            "lon": venue.lon,
            "lat": venue.lat,
            "venue_id": venue.id,
        }

    def _event_venue(self, index: int, _variant: Any) -> dict[str, Any]:
        venue = self.venue(index)
        fields: dict[str, Any] = {"id": venue.id, "name": venue.name}
        fields["address_1"] = venue.address_1
        if venue.address_2 is not None:
            fields["address_2"] = venue.address_2
        fields["city"] = venue.city.name
        if venue.city.state is not None:
            fields["state"] = venue.city.state
        fields.update(
            zip=venue.zip_code,
            country=venue.city.country,
            lat=venue.lat,
            lon=venue.lon,
        )
        if venue.phone is not None:
            fields["phone"] = venue.phone
        return fields

    def _open_venue(self, index: int, _variant: Any) -> dict[str, Any]:
        """A venue as open_venues shows it, without its mtime (added per item)."""
        venue = self.venue(index)
        fields: dict[str, Any] = {
            "id": venue.id,
            "name": venue.name,
            "address_1": venue.address_1,
        }
        if venue.address_2 is not None:
            fields["address_2"] = venue.address_2
        if venue.address_3 is not None:
            fields["address_3"] = venue.address_3
        fields["city"] = venue.city.name
        if venue.city.state is not None:
            fields["state"] = venue.city.state
        fields.update(
            zip=venue.zip_code,
            country=venue.city.country,
            lat=venue.lat,
            lon=venue.lon,
        )
        if venue.phone is not None:
            fields["phone"] = venue.phone
        return fields

    def _open_event_head(
        self, index: int, variant: tuple[bool, bool]
    ) -> dict[str, Any]:
        """The fields of an open_events item before its status and mtime."""
        with_duration, alphanumeric = variant
        event = self.event(index)
        fields: dict[str, Any] = {
            "id": self.event_shown_id(event, alphanumeric),
            "name": event.name,
            "description": event.description,
            "time": event.time,
            "utc_offset": self.group(event.group_index).city.utc_offset,
        }
        if with_duration:
            fields["duration"] = event.duration or 3 * HOUR_MS
        return fields

    def _open_event_tail(self, index: int, with_venue: bool) -> dict[str, Any]:
        """The fields of an open_events item after its counts."""
        event = self.event(index)
        fields: dict[str, Any] = {}
        if event.rsvp_limit is not None:
            fields["rsvp_limit"] = event.rsvp_limit
        fields.update(
            visibility="public",
            venue_visibility=event.venue_visibility,
            payment_required="1" if event.fee else "0",
        )
        if event.fee is not None:
            amount, currency = event.fee
            fields["fee"] = {
                "amount": amount,
                "currency": currency,
                "description": "per person",
            }
        if with_venue:
            fields["venue"] = self._event_venue(event.venue_index, None)
        fields["group"] = self._event_group(event.group_index, None)
        return fields

    def _photo_album_event(self, index: int, variant: bool) -> dict[str, Any]:
        event = self.event(index)
        return {"id": self.event_shown_id(event, variant), "name": event.name}

    def _comment_event(self, index: int, variant: bool) -> dict[str, Any]:
        event = self.event(index)
        return {
            "event_id": self.event_shown_id(event, variant),
            "event_name": event.name,
        }

    # profiles, as the v2 API answers them

    def member_profile(self, member_id: int) -> dict[str, Any] | None:
        index = self.member_index(member_id)
        if index is None:
            return None

        member = self.member(index)
        profile: dict[str, Any] = {
            "id": member.id,
            "name": member.name,
            "status": "active",
            "link": f"http://www.meetup.com/members/{member.id}",
            "city": member.city.name,
        }
        if member.city.state is not None:
            profile["state"] = member.city.state
        profile.update(
            country=member.city.country,
            lat=member.lat,
            lon=member.lon,
            lang="en_US",
            joined=member.joined,
            visited=member.visited,
        )
        if member.hometown is not None:
            profile["hometown"] = member.hometown
        if member.bio is not None:
            profile["bio"] = member.bio
        if member.photo_id is not None:
            profile["photo"] = _photo_links(member.photo_id, "member")
        profile["topics"] = [
            {"id": topic_id, "urlkey": urlkey, "name": name}
            for topic_id, urlkey, name, _cat, _who in member.topics
        ]
        profile["other_services"] = (
            {"twitter": {"identifier": member.twitter}} if member.twitter else {}
        )
        profile["self"] = {"common": {}}
        return profile

    def group_profile(self, group_id: int) -> dict[str, Any] | None:
        index = self.group_index(group_id)
        if index is None:
            return None

        group = self.group(index)
        organizer = self.member(group.organizer_index)
        main_topic = group.topics[0]
        organizer_fields: dict[str, Any] = {
            "member_id": organizer.id,
            "name": organizer.name,
        }
        if organizer.photo_id is not None:
            organizer_fields["photo"] = _photo_links(organizer.photo_id, "member")
        profile: dict[str, Any] = {
            "id": group.id,
            "name": group.name,
            "urlname": group.urlname,
            "link": f"https://www.meetup.com/{group.urlname}/",
            "description": (
                f"<p>A group for people in {group.city.name} who like "
                f"{main_topic[2].lower()}.</p>"
            ),
            "created": group.created,
            "city": group.city.name,
            "country": group.city.country.upper(),
        }
        if group.city.state is not None:
            profile["state"] = group.city.state
        profile.update(
            lat=group.lat,
            lon=group.lon,
            timezone=group.city.timezone,
            utc_offset=group.city.utc_offset,
            visibility="public",
            join_mode=group.join_mode,
            members=group.member_count,
            rating=group.rating,
            who=main_topic[4],
            category=self._category(group),
            topics=[
                {"urlkey": urlkey, "name": name, "id": topic_id}
                for topic_id, urlkey, name, _cat, _who in group.topics
            ],
            group_photo=self._group_photo(group),
            organizer=organizer_fields,
        )
        return profile


def _member_photo_id(index: int) -> int:
    return PHOTO_ID_BASE + 50_000 + index * PHOTO_ID_STRIDE


def _alphanumeric_id(numeric_id: int) -> str:
    """A recurring event's id: 12 lower-case letters, like "xxlwkmywpbzb"."""
    letters = []
    value = numeric_id * 2654435761
    for _ in range(10):
        value, digit = divmod(value, 26)
        letters.append(chr(ord("a") + digit))
    return "qx" + "".join(letters)


_FRAGMENT_BUILDERS = {
    "rsvp_group": World._rsvp_group,
    "rsvp_member": World._rsvp_member,
    "rsvp_event": World._rsvp_event,
    "rsvp_venue": World._rsvp_venue,
    "event_group": World._event_group,
    "open_event_head": World._open_event_head,
    "open_event_tail": World._open_event_tail,
    "comment_group": World._comment_group,
    "comment_member": World._comment_member,
    "comment_event": World._comment_event,
    "photo_group": World._photo_group,
    "photo_member": World._photo_member,
    "photo_album_event": World._photo_album_event,
    "open_venue": World._open_venue,
    "comment_text": lambda world, index, _variant: COMMENTS[index],
    "caption_text": lambda world, index, _variant: CAPTIONS[index],
}
