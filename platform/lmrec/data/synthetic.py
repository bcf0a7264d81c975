"""The embedded demo data: a synthetic product catalog and the simulated users who browse it.

One world model serves two purposes. ``generate_demo`` logs each user's own browsing as the offline
demo dataset (so ``make demo`` needs no download), and the same :class:`UserModel` answers "given this
recommendation slate, what does the user pick next?" for online experiments (see ``demo_world``).

- Items belong to latent topics (:data:`TOPICS`). Their text mixes the topic's own vocabulary with
  adjectives shared by every topic, so a sentence encoder can tell topics apart from text alone but
  not by the adjectives. Popularity is Zipf-like within each topic.
- A user has long-term topic tastes (a Dirichlet draw) and a current topic. Each step they stay in the
  current topic with probability ``1 - drift``, else move to another topic by taste, then pick an item
  of that topic by popularity. Consecutive events therefore share a topic ``1 - drift`` of the time:
  the sequential signal a history-aware model can exploit and popularity cannot.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``SyntheticConfig.seed``, so a seed
fixes every frame exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmrec.config import SyntheticConfig
from lmrec.data.schema import Dataset, canonical_interactions, finish_items
from lmrec.data.text import render_text
from lmrec.errors import ConfigError

TEXT_TEMPLATE = "{title}. {category}. {brand}. {description}"
EPOCH = 1_700_000_000  # first possible timestamp (Nov 2023), fixed so frames do not depend on the clock
SIM_EVENTS = ("view", "click", "purchase")  # the event types users emit, most frequent first
ZIPF_EXPONENT = 0.9  # within-topic popularity ~ 1/rank^0.9: top 10% of items get ~half the picks
TASTE_CONCENTRATION = 0.3  # mean Dirichlet alpha per topic; < 1 so most users favour a few topics
EXPLORE = 0.05  # share of every user's taste spread evenly, so any topic can still be reached
EVENT_ALPHA = (14.0, 4.5, 1.5)  # Dirichlet for a user's (view, click, purchase) mix: ~70/22/8 %
MEAN_GAP_S = 300.0  # mean seconds between a user's consecutive events


@dataclass(frozen=True)
class Topic:
    """The vocabulary of one latent topic. An item is one product of the topic, titled
    ``"<adjective> <kind>"`` and described by the product's feature and one of the topic's uses."""

    name: str
    category: str
    brands: tuple[str, ...]
    products: tuple[tuple[str, str], ...]  # (kind, feature), e.g. ("Yoga Strap", "a sturdy D-ring buckle")
    uses: tuple[str, ...]  # what the topic's items are for


# Shared by all topics: they carry no topic signal, so text models must read the topic words.
ADJECTIVES = (
    "Lightweight", "Compact", "Premium", "Classic", "Durable", "Everyday", "Pro", "Essential",
    "Deluxe", "Portable", "Eco-Friendly", "Advanced", "Minimalist", "Signature", "Original",
)  # fmt: skip
OPENERS = ("Made for", "Built for", "Great for", "Ideal for", "Designed for")

# Ordered so that any prefix (n_topics < 16) is still a set of clearly different topics.
# fmt: off
TOPICS: tuple[Topic, ...] = (
    Topic(
        "trail running", "Sports & Outdoors > Running",
        ("Ridgeline", "Switchback", "Scree", "Fellstride"),
        (("Trail Running Shoe", "a grippy lug outsole and a rock plate"),
         ("Running Hydration Vest", "a bounce-free fit with two soft flasks"),
         ("Trail Running Headlamp", "a 500-lumen beam and reflective strap"),
         ("Trail Running Gaiters", "stretch fabric that keeps out grit and stones"),
         ("Merino Running Socks", "quick-drying merino fibres"),
         ("Soft Flask for Runners", "a collapsible bottle with a bite valve")),
        ("muddy singletrack", "long mountain runs", "ultramarathon race day", "technical fell running",
         "early-morning trail miles"),
    ),
    Topic(
        "coffee brewing", "Kitchen > Coffee & Tea",
        ("Crema Lab", "Bean & Burr", "Pourwell", "Roastery Row"),
        (("Pour-Over Coffee Dripper", "a ceramic cone with spiral ribs"),
         ("Burr Coffee Grinder", "conical steel burrs and 40 grind settings"),
         ("Gooseneck Coffee Kettle", "a precise pouring spout and built-in thermometer"),
         ("Espresso Tamper", "a calibrated 58 mm stainless base"),
         ("French Press Coffee Maker", "a double-wall glass carafe and mesh filter"),
         ("Cold Brew Coffee Jar", "a reusable stainless coffee filter")),
        ("a bright morning pour-over", "rich espresso shots", "smooth cold brew",
         "cafe-quality coffee at home", "single-origin coffee beans"),
    ),
    Topic(
        "camping", "Sports & Outdoors > Camping & Hiking",
        ("Basecamp Outfitters", "Pinecone", "Northfork", "Tarn & Trail"),
        (("Backpacking Tent", "a waterproof rainfly and taped seams"),
         ("Down Sleeping Bag", "compressible goose down rated to -5 C"),
         ("Camping Stove", "a windproof burner with push-button ignition"),
         ("Inflatable Sleeping Pad", "an insulated air core and packable stuff sack"),
         ("Camp Lantern", "a dimmable LED and hanging hook"),
         ("Camping Cookware Set", "nesting pots and a folding spork")),
        ("backcountry camping trips", "overnight hikes", "cold nights under the stars",
         "car camping weekends", "multi-day treks"),
    ),
    Topic(
        "baking", "Kitchen > Bakeware",
        ("Flour & Hearth", "Proofbox", "Crumb Kitchen", "Whisk Street"),
        (("Sourdough Proofing Basket", "a rattan banneton weave and linen liner"),
         ("Nonstick Loaf Pan", "an even-heating carbon steel body"),
         ("Silicone Baking Mat", "food-grade silicone with measurement markings"),
         ("Bread Lame", "a razor-sharp dough scoring blade"),
         ("Cake Decorating Set", "interchangeable piping tips and a turntable"),
         ("Cookie Sheet", "reinforced rolled edges that resist warping")),
        ("crusty sourdough loaves", "weekend cake baking", "holiday cookies", "artisan bread at home",
         "layer cakes and pastries"),
    ),
    Topic(
        "yoga", "Sports & Fitness > Yoga",
        ("Lotus Path", "Asana Works", "Still Point", "Breathe Studio"),
        (("Yoga Mat", "a non-slip natural rubber surface with alignment lines"),
         ("Cork Yoga Block", "firm, sustainable cork"),
         ("Yoga Strap", "a sturdy D-ring buckle"),
         ("Meditation Cushion", "a buckwheat hull filling"),
         ("Yoga Bolster", "extra cushioning for supported poses"),
         ("Yoga Towel", "sweat-wicking microfibre")),
        ("hot yoga classes", "daily meditation practice", "restorative stretching", "vinyasa flow sessions",
         "deepening your poses"),
    ),
    Topic(
        "PC gaming", "Electronics > PC Gaming",
        ("Voltforge", "Pixelcore", "Hexframe", "Nightkey"),
        (("Mechanical Gaming Keyboard", "hot-swappable switches and RGB lighting"),
         ("Wireless Gaming Mouse", "a high-DPI optical sensor and low-latency wireless"),
         ("Gaming Headset", "a noise-cancelling boom mic and surround sound"),
         ("Curved Gaming Monitor", "a 165 Hz refresh rate and 1 ms response"),
         ("XL Gaming Mouse Pad", "a smooth micro-weave surface and stitched edges"),
         ("Gaming Controller", "hall-effect sticks and remappable back buttons")),
        ("competitive esports matches", "late-night gaming sessions", "fast-paced shooters",
         "streaming your gameplay", "marathon RPG campaigns"),
    ),
    Topic(
        "photography", "Electronics > Camera & Photo",
        ("Aperture Labs", "Brightfield", "Lenscraft", "Shutterline"),
        (("Mirrorless Camera Lens", "a fast f/1.8 aperture and multi-coated glass"),
         ("Carbon Fiber Camera Tripod", "a fluid ball head and quick-release plate"),
         ("Camera Sling Bag", "padded lens dividers"),
         ("Lens Filter Kit", "polarising and neutral density filters"),
         ("Camera Battery Grip", "weather sealing and two battery slots"),
         ("Photo Studio Light Kit", "dimmable softboxes with daylight bulbs")),
        ("portrait photography", "landscape shots at golden hour", "street photography",
         "low-light event shooting", "travel photography"),
    ),
    Topic(
        "gardening", "Home & Garden > Gardening",
        ("Greenthumb", "Rootstock", "Bloom & Till", "Hedgerow"),
        (("Garden Pruning Shears", "bypass steel blades"),
         ("Raised Garden Bed", "untreated cedar boards"),
         ("Garden Hose Nozzle", "seven spray patterns"),
         ("Seed Starting Tray", "a humidity dome and 72 cells"),
         ("Garden Kneeler", "a padded foam seat that flips into a kneeler"),
         ("Compost Bin", "vented aeration holes and a locking lid")),
        ("growing vegetables at home", "pruning roses and shrubs", "starting seedlings in spring",
         "backyard composting", "tending flower beds"),
    ),
    Topic(
        "home audio", "Electronics > Home Audio",
        ("Soundhaven", "Resonant", "Hi-Fi House", "Tonearm"),
        (("Bookshelf Speakers", "a silk dome tweeter and wooden cabinets"),
         ("Turntable Record Player", "a belt-driven platter and built-in preamp"),
         ("Soundbar", "virtual surround sound and a dialogue mode"),
         ("Stereo Amplifier", "a class-D amplifier with phono input"),
         ("Subwoofer", "a deep 10-inch bass driver"),
         ("Vinyl Record Cleaning Kit", "anti-static carbon fibre brushes")),
        ("listening to vinyl", "movie nights at home", "a living room hi-fi setup",
         "crisp dialogue and rich bass", "audiophile listening sessions"),
    ),
    Topic(
        "skincare", "Beauty > Skin Care",
        ("Dewy Botanics", "Clearleaf", "Skin Theory", "Aloe & Ash"),
        (("Hyaluronic Acid Serum", "a lightweight hydrating formula"),
         ("Gentle Facial Cleanser", "a fragrance-free, soap-free formula"),
         ("Vitamin C Face Cream", "stabilised vitamin C and ceramides"),
         ("Mineral Sunscreen SPF 50", "broad-spectrum UV protection with zinc oxide"),
         ("Retinol Night Cream", "encapsulated retinol and soothing aloe vera"),
         ("Hydrating Sheet Mask", "a serum-soaked biocellulose sheet")),
        ("dry and sensitive skin", "a daily skincare routine", "brightening dull skin",
         "overnight skin repair", "oily, acne-prone skin"),
    ),
    Topic(
        "cycling", "Sports & Outdoors > Cycling",
        ("Velocraft", "Chainring", "Spoke & Sprocket", "Cadence Works"),
        (("Road Bike Helmet", "rotational impact protection and 18 vents"),
         ("Bike Repair Multi-Tool", "chromoly steel hex keys and a chain breaker"),
         ("Cycling Jersey", "a full-length zip and three rear pockets"),
         ("Bike Light Set", "a 1000-lumen USB-rechargeable beam"),
         ("Clipless Cycling Shoes", "stiff carbon soles and a dial closure"),
         ("Bike Floor Pump", "a high-pressure gauge and presta valve head")),
        ("long road rides", "commuting by bike", "gravel and century rides", "roadside flat repairs",
         "group rides at dusk"),
    ),
    Topic(
        "board games", "Toys & Games > Board Games",
        ("Meeple House", "Dice Tower Games", "Tabletop Guild", "Cardstock Games"),
        (("Strategy Board Game", "a modular game board and wooden meeples"),
         ("Cooperative Card Game", "over 200 illustrated cards"),
         ("Party Word Game", "room for 4 to 10 players"),
         ("Deck-Building Game", "a 45-minute play time and two expansions"),
         ("Dice Game", "a set of custom engraved dice"),
         ("Board Game Card Sleeves", "clear protective sleeves for standard cards")),
        ("family game night", "playing with friends", "tabletop strategy fans", "parties and gatherings",
         "two-player duels"),
    ),
    Topic(
        "dog care", "Pet Supplies > Dogs",
        ("Good Boy Goods", "Pawsome", "Barkley Pet", "Tailwag"),
        (("Dog Harness", "a no-pull front clip"),
         ("Chew Toy for Dogs", "durable natural rubber"),
         ("Orthopedic Dog Bed", "memory foam support"),
         ("Retractable Dog Leash", "a one-button brake"),
         ("Grain-Free Dog Treats", "real chicken protein"),
         ("Dog Grooming Brush", "gentle deshedding bristles")),
        ("daily dog walks", "puppy training", "senior dogs with stiff joints", "aggressive chewers",
         "keeping your dog's coat healthy"),
    ),
    Topic(
        "fishing", "Sports & Outdoors > Fishing",
        ("Riverbend Tackle", "Lureworks", "Deepwater", "Troutline"),
        (("Spinning Fishing Reel", "a smooth drag system"),
         ("Fly Fishing Rod", "a graphite rod blank"),
         ("Fishing Tackle Box", "stackable lure compartments"),
         ("Fishing Lure Set", "lifelike swimbait finishes"),
         ("Chest Fishing Waders", "breathable waterproof fabric"),
         ("Braided Fishing Line", "high-abrasion braid")),
        ("bass fishing from the bank", "fly fishing for trout", "saltwater surf casting",
         "early-morning lake fishing", "weekend fishing trips"),
    ),
    Topic(
        "knitting", "Arts & Crafts > Knitting",
        ("Woolly Way", "Purl & Loop", "Skein Society", "Needlecraft"),
        (("Merino Wool Yarn", "soft superwash merino in hand-dyed colourways"),
         ("Bamboo Knitting Needles", "smooth bamboo tips"),
         ("Circular Knitting Needle Set", "interchangeable cable lengths"),
         ("Crochet Hook Set", "ergonomic soft grips"),
         ("Yarn Swift and Ball Winder", "a clamp-on wooden swift"),
         ("Knitting Pattern Book", "beginner-friendly patterns")),
        ("cozy winter sweaters", "knitting scarves and hats", "crochet blankets", "learning to knit",
         "amigurumi and small projects"),
    ),
    Topic(
        "kids science", "Toys & Games > STEM Toys",
        ("Little Labs", "Curious Kit", "Brainsprout", "Eureka Junior"),
        (("Kids Chemistry Set", "safe non-toxic experiments"),
         ("Kids Microscope", "an LED-lit 400x lens"),
         ("Robotics Kit for Kids", "snap-together circuits and motors"),
         ("Crystal Growing Kit", "step-by-step illustrated guides"),
         ("Solar System Model Kit", "glow-in-the-dark planets"),
         ("Kids Telescope", "a 70 mm refractor and tabletop tripod")),
        ("curious kids aged 8 and up", "homeschool science lessons", "rainy-day experiments",
         "science fair projects", "budding astronomers"),
    ),
)
# fmt: on


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    """One index with probability proportional to ``weights`` (never a zero-weight entry)."""
    cum = weights.cumsum()  # array methods, not np.* wrappers: this runs once per simulated event
    return int(cum.searchsorted(rng.random() * cum[-1], side="right"))


# -------------------------------------------------------------------------------------------- catalog
@dataclass
class SimCatalog:
    """The items and what the simulator needs to sample them; item index ``i`` is row ``i`` of ``items``."""

    items: pd.DataFrame  # item_id, title, category, brand, description, topic, text
    topic: np.ndarray  # (N,) int64: each item's topic
    popularity: np.ndarray  # (N,) float64: each item's share of its topic's picks (sums to 1 per topic)
    members: list[np.ndarray]  # members[t]: (N_t,) item indices of topic t

    def sample(self, rng: np.random.Generator, topic: int) -> int:
        """An item index of ``topic``, drawn by popularity."""
        members = self.members[topic]
        return int(members[_draw(rng, self.popularity[members])])


def build_catalog(n_items: int, n_topics: int, rng: np.random.Generator) -> SimCatalog:
    """``n_items`` items spread evenly over the first ``n_topics`` of :data:`TOPICS`.

    More topics than are written raise a :class:`ConfigError` rather than reusing a vocabulary under a
    new number: two topics with the same words cannot be told apart from text, so they would not be
    distinct topics to any text model.
    """
    if n_topics > len(TOPICS):
        raise ConfigError(
            f"data.synthetic.n_topics={n_topics}, but the demo catalog has {len(TOPICS)} topics written out "
            f"(lmrec.data.synthetic.TOPICS); set data.synthetic.n_topics to at most {len(TOPICS)}"
        )
    if n_items < n_topics:
        raise ConfigError(f"data.synthetic.n_items={n_items} must be at least n_topics={n_topics}")
    topic = rng.permutation(np.arange(n_items) % n_topics)
    # Independent picks per item (adjective, product, brand, opener, use), each taken modulo its list's
    # length; 2**20 dwarfs every list, so the modulo bias is negligible.
    r = rng.integers(0, 2**20, size=(n_items, 5))
    width = max(4, len(str(n_items)))
    rows = []
    for i, (adj, product, brand, opener, use) in enumerate(r.tolist()):
        t = TOPICS[topic[i]]
        kind, feature = t.products[product % len(t.products)]
        rows.append(
            {
                "item_id": f"i{i + 1:0{width}d}",
                "title": f"{ADJECTIVES[adj % len(ADJECTIVES)]} {kind}",
                "category": t.category,
                "brand": t.brands[brand % len(t.brands)],
                "description": f"{feature[0].upper()}{feature[1:]}. {OPENERS[opener % len(OPENERS)]} "
                f"{t.uses[use % len(t.uses)]}.",
                "topic": int(topic[i]),
            }
        )
    items = pd.DataFrame(rows)
    items["topic"] = items["topic"].astype(np.int64)
    items["text"] = render_text(items, TEXT_TEMPLATE, source="demo")

    members = [np.flatnonzero(topic == t) for t in range(n_topics)]
    popularity = np.zeros(n_items)
    for m in members:
        w = 1.0 / np.arange(1, len(m) + 1) ** ZIPF_EXPONENT
        popularity[m] = (w / w.sum())[rng.permutation(len(m))]  # random rank within the topic
    return SimCatalog(items, topic.astype(np.int64), popularity, members)


# ---------------------------------------------------------------------------------------------- users
@dataclass
class UserModel:
    """One simulated user. ``next_event`` moves ``topic``; the other fields stay fixed.

    Topic choice each step: stay in ``topic`` with probability ``1 - drift``, else move to a *different*
    topic drawn by ``preference`` (so the stay rate is exactly ``1 - drift``).
    """

    preference: np.ndarray  # (T,) long-term topic tastes, positive, sums to 1
    topic: int  # the topic being browsed now
    drift: float  # chance per step of moving to another topic
    event_probs: np.ndarray  # (3,) P(view), P(click), P(purchase), in that order
    slate_attention: float = 0.6  # chance of taking a slate of items from the topic they most want next

    def topic_affinity(self) -> np.ndarray:
        """(T,) the distribution of the next step's topic, given the current one."""
        other = self.preference.copy()
        other[self.topic] = 0.0
        aff = self.drift * other / other.sum()
        aff[self.topic] = 1.0 - self.drift
        return aff

    def next_event(
        self, rng: np.random.Generator, catalog: SimCatalog, slate: np.ndarray | list[int] | None = None
    ) -> tuple[int, str]:
        """The next (item index, event type), advancing ``topic``.

        ``slate``: (S,) item indices shown to the user. Slate item ``j`` is taken with probability
        ``slate_attention * a[topic_j] / (max(a) * S)`` with ``a = topic_affinity()``: proportional to how
        much the user wants that topic next, at most ``slate_attention`` in all. Otherwise (or with no
        slate) the user browses on their own. Taking a slate item moves the user to its topic.
        """
        if slate is not None and len(slate) > 0:
            slate = np.asarray(slate, dtype=np.int64)
            aff = self.topic_affinity()
            take = self.slate_attention * aff[catalog.topic[slate]] / (aff.max() * len(slate))
            j = int(np.searchsorted(np.cumsum(take), rng.random(), side="right"))
            if j < len(slate):
                item = int(slate[j])
                self.topic = int(catalog.topic[item])
                return item, SIM_EVENTS[_draw(rng, self.event_probs)]
        if rng.random() < self.drift:
            other = self.preference.copy()
            other[self.topic] = 0.0
            self.topic = _draw(rng, other)
        return catalog.sample(rng, self.topic), SIM_EVENTS[_draw(rng, self.event_probs)]


def sample_users(n_users: int, n_topics: int, drift: float, rng: np.random.Generator) -> list[UserModel]:
    """``n_users`` users with Dirichlet tastes; some topics are popular with everyone, some niche."""
    # Topic-level skew on top of per-user tastes, so global popularity is a real (but beatable) baseline.
    base = rng.permutation(1.0 / np.sqrt(np.arange(1, n_topics + 1)))
    alpha = TASTE_CONCENTRATION * n_topics * base / base.sum()
    prefs = (1 - EXPLORE) * rng.dirichlet(alpha, size=n_users) + EXPLORE / n_topics
    mixes = -np.sort(-rng.dirichlet(EVENT_ALPHA, size=n_users), axis=1)  # keep view > click > purchase
    return [UserModel(p, _draw(rng, p), drift, m) for p, m in zip(prefs, mixes)]


# ------------------------------------------------------------------------------------------- the demo
def demo_world(cfg: SyntheticConfig) -> tuple[SimCatalog, list[UserModel], Dataset]:
    """The catalog, the users (in their state after the logged history), and the logged dataset.

    Online experiments continue from here: call ``users[u].next_event(rng, catalog, slate)``.
    """
    rng = np.random.default_rng(cfg.seed)
    catalog = build_catalog(cfg.n_items, cfg.n_topics, rng)
    users = sample_users(cfg.n_users, cfg.n_topics, cfg.drift, rng)
    spread = cfg.events_per_user // 5  # sequence lengths vary +-20% around the configured mean
    lengths = np.maximum(5, cfg.events_per_user + rng.integers(-spread, spread + 1, size=cfg.n_users))
    width = max(4, len(str(cfg.n_users)))
    user_ids, item_idx, events, stamps = [], [], [], []
    for u, (user, n) in enumerate(zip(users, lengths)):
        for _ in range(n):
            item, event = user.next_event(rng, catalog)
            item_idx.append(item)
            events.append(event)
        user_ids += [f"u{u + 1:0{width}d}"] * int(n)
        # Strictly increasing per user: a random start within 30 days, then gaps of at least 1 s.
        start = EPOCH + rng.integers(0, 30 * 86_400)
        stamps.append(start + np.cumsum(1 + rng.exponential(MEAN_GAP_S, size=n).astype(np.int64)))
    item_ids = catalog.items["item_id"].to_numpy()[np.asarray(item_idx)]
    inter = canonical_interactions(user_ids, item_ids, np.concatenate(stamps), event=events, source="demo")
    ds = Dataset(
        name="demo",
        interactions=inter,
        items=finish_items(catalog.items, inter),
        source="synthetic",
        synthetic=True,
        info={
            "format": "synthetic",
            "text_template": TEXT_TEMPLATE,
            "note": "synthetic demo data generated by lmrec",
        },
    )
    return catalog, users, ds


def generate_demo(cfg: SyntheticConfig) -> Dataset:
    """The deterministic demo dataset for ``cfg`` (same seed, same frames)."""
    return demo_world(cfg)[2]
