"""Procedural speakers for the synthetic corpus: face shape, colours, accessories, voice, style.

An identity is a pure function of (corpus seed, index). Skin tone, face shape and voice walk
low-discrepancy sequences over the index so that even a few dozen identities spread over the
whole range instead of clustering; the rest comes from a generator seeded by both numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl")
# espeak-ng voices per language (base names without variant).
VOICE_BASES: dict[str, tuple[str, ...]] = {
    "en": ("en", "en-us", "en-gb-x-rp"),
    "de": ("de",),
    "fr": ("fr", "fr-be"),
    "es": ("es", "es-419"),
    "it": ("it",),
    "pt": ("pt", "pt-br"),
    "nl": ("nl",),
    "pl": ("pl",),
}
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
_GOLDEN = 0.6180339887498949

# (subjects, verb phrases, endings) per language: every combination is a grammatical sentence.
_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        ("My brother", "The old man", "Our teacher", "Maria", "The baby", "A happy woman",
         "The tall boy", "Your mother", "Peter", "The new pilot"),
        ("reads a book", "moves the blue boat", "eats sweet apples", "opens the window",
         "paints a big moon", "sings a loud song", "buys fresh bread", "plays with a ball",
         "watches the movie", "sees the tiny bee"),
        ("every morning.", "in the park.", "near the pool.", "with a smile.", "before noon.",
         "at the museum.", "on Monday.", "by the sea.", "after lunch.", "too early."),
    ),
    "de": (
        ("Mein Bruder", "Der alte Mann", "Unsere Lehrerin", "Maria", "Das Baby", "Die Oma",
         "Der kleine Junge", "Deine Mutter", "Peter", "Der neue Pilot"),
        ("liest ein Buch", "malt einen blauen Mond", "isst süße Äpfel", "öffnet das Fenster",
         "kauft frisches Brot", "spielt mit dem Ball", "sieht die Biene", "singt ein Lied",
         "baut ein Boot", "putzt die Schuhe"),
        ("jeden Morgen.", "im Garten.", "am Montag.", "mit viel Mut.", "vor dem Mittag.",
         "im Museum.", "an der Mauer.", "am Meer.", "nach dem Essen.", "zu früh."),
    ),
    "fr": (
        ("Mon frère", "Le vieil homme", "Notre maître", "Marie", "Le bébé", "Ma voisine",
         "Le petit garçon", "Ta mère", "Pierre", "Le nouveau pilote"),
        ("lit un livre", "peint une lune bleue", "mange des pommes", "ouvre la fenêtre",
         "achète du pain", "joue avec un ballon", "regarde le bateau", "chante une chanson",
         "boit du jus", "voit une abeille"),
        ("chaque matin.", "dans le jardin.", "le lundi.", "avec un sourire.", "avant midi.",
         "au musée.", "près du mur.", "au bord de la mer.", "après le repas.", "trop tôt."),
    ),
    "es": (
        ("Mi hermano", "El viejo", "Nuestra maestra", "María", "El bebé", "Mi vecina",
         "El niño pequeño", "Tu madre", "Pedro", "El nuevo piloto"),
        ("lee un libro", "pinta una luna azul", "come manzanas", "abre la ventana",
         "compra pan fresco", "juega con la pelota", "mira el barco", "canta una canción",
         "bebe un zumo", "ve una abeja"),
        ("cada mañana.", "en el jardín.", "el lunes.", "con una sonrisa.", "antes del mediodía.",
         "en el museo.", "junto al muro.", "cerca del mar.", "después de comer.", "muy pronto."),
    ),
    "it": (
        ("Mio fratello", "Il vecchio", "La nostra maestra", "Maria", "Il bambino", "Mia zia",
         "Il ragazzo alto", "Tua madre", "Paolo", "Il nuovo pilota"),
        ("legge un libro", "dipinge una luna blu", "mangia le mele", "apre la finestra",
         "compra il pane", "gioca con la palla", "guarda la barca", "canta una canzone",
         "beve un succo", "vede un'ape"),
        ("ogni mattina.", "nel giardino.", "il lunedì.", "con un sorriso.", "prima di pranzo.",
         "al museo.", "vicino al muro.", "in riva al mare.", "dopo cena.", "troppo presto."),
    ),
    "pt": (
        ("O meu irmão", "O velho", "A nossa professora", "Maria", "O bebé", "A minha vizinha",
         "O menino", "A tua mãe", "Paulo", "O novo piloto"),
        ("lê um livro", "pinta uma lua azul", "come maçãs", "abre a janela",
         "compra pão fresco", "joga com a bola", "olha o barco", "canta uma canção",
         "bebe um sumo", "vê uma abelha"),
        ("todas as manhãs.", "no jardim.", "na segunda-feira.", "com um sorriso.",
         "antes do almoço.", "no museu.", "junto ao muro.", "perto do mar.",
         "depois do jantar.", "muito cedo."),
    ),
    "nl": (
        ("Mijn broer", "De oude man", "Onze juf", "Maria", "De baby", "Mijn buurvrouw",
         "De kleine jongen", "Jouw moeder", "Peter", "De nieuwe piloot"),
        ("leest een boek", "schildert een blauwe maan", "eet zoete appels", "opent het raam",
         "koopt vers brood", "speelt met de bal", "ziet de boot", "zingt een lied",
         "drinkt melk", "ziet een bij"),
        ("elke ochtend.", "in de tuin.", "op maandag.", "met een glimlach.", "voor de middag.",
         "in het museum.", "bij de muur.", "aan zee.", "na het eten.", "veel te vroeg."),
    ),
    "pl": (
        ("Mój brat", "Stary człowiek", "Nasza nauczycielka", "Maria", "Małe dziecko",
         "Moja sąsiadka", "Wysoki chłopiec", "Twoja mama", "Paweł", "Nowy pilot"),
        ("czyta książkę", "maluje niebieski księżyc", "je słodkie jabłka", "otwiera okno",
         "kupuje świeży chleb", "gra w piłkę", "ogląda łódź", "śpiewa piosenkę",
         "pije mleko", "widzi pszczołę"),
        ("każdego ranka.", "w ogrodzie.", "w poniedziałek.", "z uśmiechem.", "przed południem.",
         "w muzeum.", "przy murze.", "nad morzem.", "po obiedzie.", "za wcześnie."),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Geometry:
    """Scale factors (1 = the source photo) applied to the neutral 3D face mesh."""

    face_width: float
    face_length: float
    jaw_width: float
    nose_length: float
    eye_spacing: float
    lip_thickness: float


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB 0..1), texture noise, hair, accessories and the scene around the head."""

    mirror: bool
    skin: tuple[float, float, float]
    albedo_seed: int
    albedo_strength: float  # amplitude of the low-frequency skin noise
    cheek: tuple[float, float, float]
    cheek_strength: float
    hair: tuple[float, float, float]
    hair_extent: tuple[float, float, float]  # hair reach at the top and sides (1 = photo), strands
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    clothing: tuple[float, float, float]
    glasses: tuple[float, float, float] | None  # frame colour
    earrings: tuple[float, float, float] | None
    hat: tuple[float, float, float] | None  # a band across the top of the hair
    background: tuple[tuple[float, float, float], tuple[float, float, float], float]


@dataclass(frozen=True)
class Style:
    """How the identity articulates: amplitudes, coarticulation timing and variation."""

    amplitude: float  # scales the jaw/lip opening
    rounding: float  # scales lip rounding (corners in, lips forward)
    spreading: float  # scales lip spreading (corners out)
    lag_s: float  # anticipation: how far ahead the lips look
    smooth_s: float  # coarticulation smoothing
    variation: float  # per-utterance random factor on the amplitudes (0.1 = +-10 %)
    rate: int  # espeak words per minute
    pitch: int  # espeak pitch 0..100
    head_motion: float  # scales the head rotation range


@dataclass(frozen=True)
class Identity:
    """One synthetic speaker."""

    index: int
    seed: int
    name: str
    language: str
    voice: str
    geometry: Geometry
    appearance: Appearance
    style: Style

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return asdict(self)


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    v = np.clip(values, 0.0, 1.0)
    return (round(float(v[0]), 4), round(float(v[1]), 4), round(float(v[2]), 4))


def skin_tone(level: float) -> np.ndarray:
    """Skin colour (RGB 0..1) from light (level 0) through medium to dark (level 1)."""
    stops = np.array(
        [[0.98, 0.84, 0.76], [0.90, 0.70, 0.56], [0.76, 0.54, 0.38], [0.56, 0.37, 0.25],
         [0.36, 0.23, 0.16]]
    )  # fmt: skip
    x = np.clip(level, 0.0, 1.0) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return stops[i] + (stops[i + 1] - stops[i]) * (x - i)


def make_identity(seed: int, index: int) -> Identity:
    """The identity `index` of the corpus made with `seed` (pure: same inputs, same identity)."""
    rng = np.random.default_rng([int(seed), int(index), 7321])
    offset = np.random.default_rng([int(seed), 11]).uniform(0, 1, 3)
    # Low-discrepancy walks over the index keep neighbours in index far apart in appearance.
    tone = (offset[0] + index * _GOLDEN) % 1.0
    shape = (offset[1] + index * _GOLDEN**2) % 1.0
    language = LANGUAGES[index % len(LANGUAGES)]
    bases = VOICE_BASES[language]
    variant = VARIANTS[(index // len(LANGUAGES) + int(offset[2] * 97)) % len(VARIANTS)]
    voice = f"{bases[(index // len(LANGUAGES)) % len(bases)]}+{variant}"

    def factor(spread: float) -> float:
        return round(float(1.0 + rng.uniform(-spread, spread)), 4)

    geometry = Geometry(
        face_width=round(0.88 + 0.22 * shape, 4),
        face_length=factor(0.08),
        jaw_width=factor(0.12),
        nose_length=factor(0.15),
        eye_spacing=factor(0.08),
        lip_thickness=factor(0.25),
    )
    skin = skin_tone(tone) * rng.uniform(0.95, 1.05, 3)
    hair_palette = np.array(
        [[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.28, 0.14], [0.80, 0.65, 0.40],
         [0.55, 0.20, 0.08], [0.55, 0.55, 0.55], [0.85, 0.85, 0.82], [0.15, 0.12, 0.25]]
    )  # fmt: skip
    iris_palette = np.array([[0.25, 0.14, 0.06], [0.20, 0.40, 0.65], [0.30, 0.45, 0.25],
                             [0.45, 0.35, 0.20], [0.10, 0.08, 0.06]])  # fmt: skip
    accessory = rng.uniform(0, 1, 3)
    appearance = Appearance(
        mirror=bool(index % 2),
        skin=_rgb(skin),
        albedo_seed=int(rng.integers(0, 2**31 - 1)),
        albedo_strength=round(float(rng.uniform(0.03, 0.10)), 4),
        cheek=_rgb(np.array([0.85, 0.35, 0.35]) * rng.uniform(0.7, 1.1, 3)),
        cheek_strength=round(float(rng.uniform(0.0, 0.35)), 4),
        hair=_rgb(hair_palette[rng.integers(len(hair_palette))] * rng.uniform(0.85, 1.15, 3)),
        hair_extent=(
            round(float(rng.uniform(0.55, 1.15)), 4),
            round(float(rng.uniform(0.45, 1.1)), 4),
            round(float(rng.uniform(0.0, 1.0)), 4),
        ),
        iris=_rgb(iris_palette[rng.integers(len(iris_palette))]),
        lips=_rgb(np.array([0.70, 0.30, 0.32]) * rng.uniform(0.6, 1.15, 3)),
        clothing=_rgb(rng.uniform(0.05, 0.9, 3)),
        glasses=_rgb(rng.uniform(0.0, 0.5, 3)) if accessory[0] < 0.3 else None,
        earrings=_rgb(rng.uniform(0.5, 1.0, 3)) if accessory[1] < 0.3 else None,
        hat=_rgb(rng.uniform(0.1, 0.9, 3)) if accessory[2] < 0.2 else None,
        background=(
            _rgb(rng.uniform(0.1, 0.85, 3)),
            _rgb(rng.uniform(0.1, 0.85, 3)),
            round(float(rng.uniform(0, 2 * np.pi)), 4),
        ),
    )
    style = Style(
        amplitude=round(float(rng.uniform(0.75, 1.2)), 4),
        rounding=round(float(rng.uniform(0.75, 1.2)), 4),
        spreading=round(float(rng.uniform(0.75, 1.2)), 4),
        lag_s=round(float(rng.uniform(0.03, 0.09)), 4),
        smooth_s=round(float(rng.uniform(0.025, 0.045)), 4),
        variation=round(float(rng.uniform(0.05, 0.15)), 4),
        rate=int(rng.integers(140, 185)),
        pitch=int(rng.integers(35, 70)),
        head_motion=round(float(rng.uniform(0.5, 1.0)), 4),
    )
    return Identity(
        index=int(index),
        seed=int(seed),
        name=f"id{index:03d}",
        language=language,
        voice=voice,
        geometry=geometry,
        appearance=appearance,
        style=style,
    )


def sentence(language: str, rng: np.random.Generator) -> str:
    """One random sentence of the language's bank (subject, verb phrase, ending)."""
    if language not in _WORDS:
        raise ValueError(f"no sentence bank for language {language!r}")
    parts = _WORDS[language]
    return " ".join(str(part[rng.integers(len(part))]) for part in parts)


def text_for(language: str, rng: np.random.Generator, seconds: float) -> str:
    """Enough sentences to fill about `seconds` of speech (~2.2 s per sentence)."""
    count = max(1, int(np.ceil(seconds / 2.2)))
    return " ".join(sentence(language, rng) for _ in range(count))
