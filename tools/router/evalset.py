"""The router's eval set: prompts with a known answer or a verifiable instruction.

Two sources, never mixed:

* ``templates`` (the main set, 500+ items): factual questions from tables kept here (capitals,
  chemical symbols, science and general knowledge, sequences, opposites), arithmetic, verifiable
  short instructions, rewriting with a computed reference, Python questions (expressions whose
  answer is computed by evaluating them, and language questions), and Chinese. Split into a
  ``fit`` half (the learned router, the PPO policy and every threshold are fitted on it) and a
  ``report`` half (never fitted on) by a hash of the item id.
* ``handwritten`` (``heldout.py``): prompts of another kind, written by hand as a user would
  ask: chatty, multi-sentence, word problems, distractors, mixed languages. Nothing is fitted on
  them; they are reported on their own, to show how the policies carry over to other traffic.

Every item is {id, source, category, prompt, check}; ``tools.router.judge.score`` reads the
check. The student's training prompts (``tools.distill.prompts``) are made by other templates
from other word lists; a unit test checks that no prompt is in both.
"""

from __future__ import annotations

import hashlib
import random

from tools.router import heldout

SEED = 2024

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasília", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"),
    ("India", "New Delhi"),
    ("Kenya", "Nairobi"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogotá", "Bogota"),
    ("Cuba", "Havana"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"),
    ("Czech Republic", "Prague"),
    ("Ukraine", "Kyiv", "Kiev"),
    ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"),
    ("Saudi Arabia", "Riyadh"),
    ("Pakistan", "Islamabad"),
    ("New Zealand", "Wellington"),
]
ELEMENTS = [
    ("hydrogen", "H"),
    ("helium", "He"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("oxygen", "O"),
    ("sodium", "Na"),
    ("iron", "Fe"),
    ("gold", "Au"),
    ("silver", "Ag"),
    ("copper", "Cu"),
    ("lead", "Pb"),
    ("potassium", "K"),
    ("calcium", "Ca"),
    ("chlorine", "Cl"),
    ("sulfur", "S"),
    ("zinc", "Zn"),
    ("mercury", "Hg"),
    ("tin", "Sn"),
    ("neon", "Ne"),
    ("magnesium", "Mg"),
    ("aluminium", "Al"),
    ("uranium", "U"),
    ("silicon", "Si"),
    ("phosphorus", "P"),
]
FACTS = [
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("What is the chemical formula of water?", ["H2O", "H₂O"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many continents are there on Earth?", ["7", "seven"]),
    ("What is the freezing point of water in degrees Celsius?", ["0", "zero"]),
    ("What is the boiling point of water at sea level in degrees Celsius?", ["100"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the longest river in Africa?", ["Nile"]),
    ("Who wrote 'Romeo and Juliet'?", ["Shakespeare"]),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
    ("What is the hardest natural substance?", ["diamond"]),
    ("What is the main language spoken in Brazil?", ["Portuguese"]),
    ("How many days are there in a leap year?", ["366"]),
    ("How many hours are in a day?", ["24", "twenty-four"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What do bees make?", ["honey"]),
    ("What is the closest star to Earth?", ["Sun"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("What is the largest mammal?", ["blue whale"]),
    ("Which organ pumps blood through the human body?", ["heart"]),
    ("What is the currency of Japan?", ["yen"]),
    ("What is the currency of the United Kingdom?", ["pound"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("Which language has the most native speakers?", ["Mandarin", "Chinese"]),
    ("What color do you get by mixing blue and yellow?", ["green"]),
    ("What color do you get by mixing red and white?", ["pink"]),
    ("How many sides does a hexagon have?", ["6", "six"]),
    ("How many sides does a triangle have?", ["3", "three"]),
    ("What is the square root of 81?", ["9", "nine"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("What is the opposite of north?", ["south"]),
    ("What is the first letter of the English alphabet?", ["A"]),
    ("Which metal is liquid at room temperature?", ["mercury"]),
    ("What is the capital of the United States?", ["Washington"]),
    ("What is frozen water called?", ["ice"]),
    ("What do caterpillars turn into?", ["butterfl", "moth"]),
    ("Which bird is a symbol of peace?", ["dove"]),
    ("What is the largest desert in the world?", ["Sahara", "Antarctic"]),
    ("Which planet has the most famous rings?", ["Saturn"]),
    ("What instrument has 88 keys?", ["piano"]),
]
SEQUENCES = [
    ("Monday", "Tuesday"),
    ("Tuesday", "Wednesday"),
    ("Wednesday", "Thursday"),
    ("Thursday", "Friday"),
    ("Friday", "Saturday"),
    ("Saturday", "Sunday"),
    ("Sunday", "Monday"),
    ("January", "February"),
    ("March", "April"),
    ("May", "June"),
    ("July", "August"),
    ("September", "October"),
    ("November", "December"),
    ("December", "January"),
    ("spring", "summer"),
    ("autumn", "winter"),
]
OPPOSITES = [
    ("hot", ["cold"]),
    ("big", ["small", "little"]),
    ("fast", ["slow"]),
    ("up", ["down"]),
    ("happy", ["sad", "unhappy"]),
    ("light", ["dark", "heavy"]),
    ("open", ["closed", "shut"]),
    ("early", ["late"]),
    ("full", ["empty"]),
    ("old", ["new", "young"]),
    ("rich", ["poor"]),
    ("strong", ["weak"]),
    ("wet", ["dry"]),
    ("tall", ["short"]),
    ("win", ["lose"]),
    ("begin", ["end", "finish"]),
    ("true", ["false"]),
    ("inside", ["outside"]),
    ("day", ["night"]),
    ("left", ["right"]),
]
PY_CONCEPTS = [
    ("Which Python keyword defines a function?", ["def"]),
    ("Which Python keyword defines a class?", ["class"]),
    ("Which Python keyword is used to handle exceptions together with try?", ["except"]),
    ("Which built-in Python function returns the number of items in a list?", ["len"]),
    ("Which built-in Python function prints text to the screen?", ["print"]),
    ("Which built-in Python function reads a line of text typed by the user?", ["input"]),
    ("What is the Python keyword for an anonymous function?", ["lambda"]),
    ("Which Python statement exits a loop early?", ["break"]),
    ("Which Python statement skips to the next iteration of a loop?", ["continue"]),
    ("What does the Python keyword 'None' represent?", ["absence", "no value", "null", "nothing"]),
    ("Which Python data type is immutable: list or tuple?", ["tuple"]),
    ("Which Python module provides the sqrt function?", ["math"]),
    ("Which Python module is used to work with JSON data?", ["json"]),
    ("Which Python module gives random numbers?", ["random"]),
    ("Which Python module lets you work with dates and times?", ["datetime"]),
    ("Which Python module handles regular expressions?", ["re"]),
    ("What is the file extension of Python source files?", [".py", "py"]),
    ("Which Python method adds an item to the end of a list?", ["append"]),
    ("Which Python string method removes whitespace from both ends?", ["strip"]),
    ("Which Python string method splits a string into a list?", ["split"]),
    ("Which operator is used for exponentiation in Python?", ["**"]),
    ("Which operator gives the remainder of a division in Python?", ["%", "modulo"]),
    ("Which Python keyword is used to import a module?", ["import"]),
    ("Which Python built-in turns a string like '42' into an integer?", ["int"]),
    ("What Python keyword returns a value from a function?", ["return"]),
    ("Which Python keyword starts a loop over the items of a list?", ["for"]),
    ("What is the boolean type called in Python?", ["bool"]),
    ("Which Python built-in gives a sequence of numbers, often used in for loops?", ["range"]),
    ("What symbol starts a comment in Python?", ["#"]),
    ("Which Python dictionary method returns its keys?", ["keys"]),
]
ZH_CAPITALS = [
    ("中国", "北京"),
    ("日本", "东京"),
    ("法国", "巴黎"),
    ("英国", "伦敦"),
    ("美国", "华盛顿"),
    ("俄罗斯", "莫斯科"),
    ("德国", "柏林"),
    ("意大利", "罗马"),
    ("韩国", "首尔"),
    ("埃及", "开罗"),
    ("泰国", "曼谷"),
    ("西班牙", "马德里"),
]
ZH_WORDS = [
    ("猫", ["cat"]),
    ("狗", ["dog"]),
    ("水", ["water"]),
    ("书", ["book"]),
    ("太阳", ["sun"]),
    ("月亮", ["moon"]),
    ("苹果", ["apple"]),
    ("老师", ["teacher"]),
    ("学校", ["school"]),
    ("朋友", ["friend"]),
    ("火车", ["train"]),
    ("飞机", ["plane", "airplane", "aircraft"]),
    ("医生", ["doctor"]),
    ("红色", ["red"]),
    ("谢谢", ["thank"]),
]
EN_TO_ZH = [
    ("water", ["水"]),
    ("cat", ["猫"]),
    ("dog", ["狗"]),
    ("book", ["书"]),
    ("mountain", ["山"]),
    ("fire", ["火"]),
    ("hello", ["你好"]),
    ("China", ["中国"]),
    ("teacher", ["老师"]),
    ("rice", ["米", "饭"]),
]
ZH_FACTS = [
    ("一年有几个月？", 12),
    ("一个星期有几天？", 7),
    ("一天有多少个小时？", 24),
    ("一小时有多少分钟？", 60),
    ("一只猫有几条腿？", 4),
    ("三角形有几条边？", 3),
    ("一打是多少个？", 12),
    ("一百减去一等于多少？", 99),
]
ZH_DIGITS = "零一二三四五六七八九十"
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "my cat likes to sleep in the sun",
    "we will meet at the station tomorrow",
    "this soup needs more salt",
    "the library opens at nine",
    "he forgot his umbrella again",
    "our team won the final match",
    "the train to the coast was late",
    "please close the window before you leave",
]
PLURALS = [
    ("cat", "cats"),
    ("box", "boxes"),
    ("child", "children"),
    ("mouse", "mice"),
    ("city", "cities"),
    ("knife", "knives"),
    ("tooth", "teeth"),
    ("bus", "buses"),
    ("woman", "women"),
    ("leaf", "leaves"),
]
PAST = [
    ("go", "went"),
    ("eat", "ate"),
    ("see", "saw"),
    ("run", "ran"),
    ("write", "wrote"),
    ("buy", "bought"),
    ("swim", "swam"),
    ("take", "took"),
    ("make", "made"),
    ("think", "thought"),
]
WORDS = [
    "apple",
    "river",
    "garden",
    "silver",
    "planet",
    "window",
    "yellow",
    "rabbit",
    "pencil",
    "forest",
    "bottle",
    "cloud",
]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def _contains(*forms: str, case_sensitive: bool = False) -> dict:
    return {"kind": "contains", "any": list(forms), **({"case_sensitive": True} if case_sensitive else {})}


def _number(value: float) -> dict:
    return {"kind": "number", "value": value}


def _rules(*rules: tuple) -> dict:
    return {"kind": "rules", "rules": [list(rule) for rule in rules]}


def _factual(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for country, *capital in CAPITALS:
        out.append(
            (
                "factual",
                rng.choice(
                    ["What is the capital of {c}?", "Name the capital city of {c}.", "{c}'s capital is which city?"]
                ).format(c=country),
                _contains(*capital),
            )
        )
    for name, symbol in ELEMENTS:
        out.append(("factual", f"What is the chemical symbol of {name}?", _contains(symbol, case_sensitive=True)))
    for question, forms in FACTS:
        out.append(("factual", question, _contains(*forms)))
    for first, following in SEQUENCES:
        out.append(("factual", f"What comes after {first}?", _contains(following)))
    for word, forms in OPPOSITES:
        out.append(("factual", f"What is the opposite of the word '{word}'?", _contains(*forms)))
    return out


def _arithmetic(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for i in range(90):
        kind = i % 6
        a, b = rng.randint(3, 99), rng.randint(2, 49)
        if kind == 0:
            out.append(("math", f"Calculate {a} plus {b}.", _number(a + b)))
        elif kind == 1:
            out.append(("math", f"Subtract {b} from {a + b}. What do you get?", _number(a)))
        elif kind == 2:
            x, y = rng.randint(2, 12), rng.randint(2, 12)
            out.append(("math", f"What is {x} multiplied by {y}?", _number(x * y)))
        elif kind == 3:
            x, y = rng.randint(2, 12), rng.randint(2, 12)
            out.append(("math", f"Divide {x * y} by {x}.", _number(y)))
        elif kind == 4:
            out.append(("math", f"What is double {a}?", _number(2 * a)))
        else:
            x = rng.randint(2, 15)
            out.append(("math", f"What is {x} squared?", _number(x * x)))
    return out


def _instructions(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for word in WORDS:
        out.append(
            (
                "instruction",
                f"Write a sentence that uses the word '{word}'.",
                _rules(("contains", word), ("min_words", 4)),
            )
        )
        out.append(
            (
                "instruction",
                f"Write the word '{word}' in capital letters and nothing else.",
                _rules(
                    ("one_of", [word.upper()]),
                ),
            )
        )
    for color in COLORS:
        out.append(
            (
                "instruction",
                f"Name three things that are {color}, separated by commas, and nothing else.",
                _rules(("comma_items", 3), ("max_words", 12)),
            )
        )
        out.append(
            (
                "instruction",
                f"Describe the color {color} in at most ten words.",
                _rules(("max_words", 10), ("min_words", 2)),
            )
        )
    for topic in ["the sea", "a city at night", "autumn leaves", "a sleeping cat", "morning coffee", "snow"]:
        out.append(
            (
                "instruction",
                f"Write exactly two lines about {topic}.",
                _rules(
                    ("lines", 2),
                ),
            )
        )
        out.append(
            (
                "instruction",
                f"Write one sentence about {topic} that ends with an exclamation mark.",
                _rules(("ends_with", "!"), ("max_words", 30)),
            )
        )
    for question in [
        "Is the sun a star?",
        "Is water wet?",
        "Can fish breathe underwater?",
        "Is ice hot?",
        "Do cats bark?",
        "Is two greater than one?",
        "Is Paris in France?",
        "Can birds fly?",
    ]:
        out.append(
            (
                "instruction",
                f"Answer only 'yes' or 'no': {question}",
                _rules(
                    ("one_of", ["yes", "no"]),
                ),
            )
        )
    for n in (3, 4, 5):
        out.append(
            (
                "instruction",
                f"List {n} animals, one per line, with no other text.",
                _rules(
                    ("lines", n),
                ),
            )
        )
        out.append(
            (
                "instruction",
                f"Write a greeting of at most {n + 2} words.",
                _rules(
                    ("max_words", n + 2),
                ),
            )
        )
    out.append(
        (
            "instruction",
            'Reply with a JSON object with a key "name" whose value is "Ada".',
            _rules(("json", None), ("contains", "Ada")),
        )
    )
    out.append(
        (
            "instruction",
            "Reply with a JSON list of three numbers.",
            _rules(
                ("json", None),
            ),
        )
    )
    out.append(
        (
            "instruction",
            "Start your answer with 'Dear friend' and write one short sentence.",
            _rules(("starts_with", "Dear friend"), ("max_words", 25)),
        )
    )
    out.append(
        ("instruction", "Say hello in lowercase letters only.", _rules(("all_lower", None), ("contains", "hello")))
    )
    rng.shuffle(out)
    return out


def _rewriting(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for sentence in SENTENCES:
        out.append(
            (
                "rewriting",
                f"Rewrite this sentence in capital letters: {sentence}",
                _contains(sentence.upper(), case_sensitive=True),
            )
        )
        title = sentence[0].upper() + sentence[1:] + "."
        out.append(
            (
                "rewriting",
                f"Add a capital letter at the start and a full stop at the end: {sentence}",
                _contains(title, case_sensitive=True),
            )
        )
        words = sentence.split()
        out.append(("rewriting", f"Remove the first word of this sentence: {sentence}", _contains(" ".join(words[1:]))))
        target = rng.choice([w for w in words if len(w) > 3])
        out.append(
            (
                "rewriting",
                f"In the sentence '{sentence}', replace the word '{target}' with 'banana'.",
                _contains(sentence.replace(target, "banana", 1)),
            )
        )
    for singular, plural in PLURALS:
        out.append(("rewriting", f"What is the plural of '{singular}'?", _contains(plural)))
    for present, past in PAST:
        out.append(("rewriting", f"What is the past tense of the verb '{present}'?", _contains(past)))
    for _ in range(10):
        words = rng.sample(WORDS, 3)
        out.append(
            ("rewriting", f"Sort these words alphabetically: {', '.join(words)}", _contains(", ".join(sorted(words))))
        )
    return out


def _python(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = [("python", question, _contains(*forms)) for question, forms in PY_CONCEPTS]
    for i in range(64):
        word = rng.choice(WORDS)
        n, m = rng.randint(2, 9), rng.randint(2, 5)
        items = [rng.randint(0, 30) for _ in range(rng.randint(3, 5))]
        expression = [
            f"len({word!r})",
            f"{word!r}.upper()",
            f"{word!r}[0]",
            f"{items}[0]",
            f"sum({items})",
            f"max({items})",
            f"min({items})",
            f"len({items})",
            f"{n} ** {m}",
            f"{n * m + 1} // {m}",
            f"{n * m + 1} % {m}",
            f"{word!r}[-1]",
            f"{word!r}.capitalize()",
            f"{n} * {m} + 1",
            f"abs(-{n * m})",
            f"sorted({items})",
        ][i % 16]
        # Our own expressions, evaluated with nothing but these built-ins: the reference is Python's answer.
        value = eval(
            expression, {"__builtins__": {"len": len, "sum": sum, "max": max, "min": min, "abs": abs, "sorted": sorted}}
        )
        phrasing = rng.choice(
            ["What does `{e}` evaluate to in Python?", "What is the result of the Python expression `{e}`?"]
        )
        if isinstance(value, int):
            check = _number(value)
        elif isinstance(value, list):
            check = _contains(str(value), str(value).replace(" ", ""))
        else:
            check = _contains(value, repr(value), case_sensitive=True)
        out.append(("python", phrasing.format(e=expression), check))
    return out


def _chinese(rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for country, capital in ZH_CAPITALS:
        out.append(("chinese", f"{country}的首都是哪个城市？", _contains(capital)))
    for word, forms in ZH_WORDS:
        out.append(("chinese", f"“{word}”用英语怎么说？", _contains(*forms)))
    for word, forms in EN_TO_ZH:
        out.append(("chinese", f"How do you say '{word}' in Chinese?", _contains(*forms)))
    for question, value in ZH_FACTS:
        out.append(("chinese", question, _number(value)))
    for _ in range(15):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append(("chinese", f"{ZH_DIGITS[a]}加{ZH_DIGITS[b]}是多少？", _number(a + b)))
    for topic in ["春天", "大海", "我的家"]:
        out.append(
            (
                "chinese",
                f"请用中文写一句关于{topic}的话。",
                _rules(
                    ("chinese", None),
                ),
            )
        )
    return out


def split_of(item_id: str) -> str:
    """``fit`` or ``report``: half each, fixed by a hash of the id."""
    return "fit" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "report"


def template_items(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for maker in (_factual, _arithmetic, _instructions, _rewriting, _python, _chinese):
        rows += maker(rng)
    items, seen = [], set()
    for category, prompt, check in rows:
        if prompt in seen:
            continue
        seen.add(prompt)
        item_id = "t-" + hashlib.sha256(prompt.encode()).hexdigest()[:10]
        items.append(
            {
                "id": item_id,
                "source": "templates",
                "split": split_of(item_id),
                "category": category,
                "prompt": prompt,
                "check": check,
            }
        )
    return items


def handwritten_items() -> list[dict]:
    items = []
    for category, prompt, check in heldout.ITEMS:
        item_id = "h-" + hashlib.sha256(prompt.encode()).hexdigest()[:10]
        items.append(
            {
                "id": item_id,
                "source": "handwritten",
                "split": "heldout",
                "category": category,
                "prompt": prompt,
                "check": check,
            }
        )
    return items


def all_items() -> list[dict]:
    return template_items() + handwritten_items()
