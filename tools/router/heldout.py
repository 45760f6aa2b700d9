"""The second, held-out source of eval prompts: written by hand, as users ask.

Another kind than the template prompts that the policies are fitted on (and than the student's
training prompts): conversational wording, context before the question, small word problems,
distractors, typos, questions in Chinese and mixed languages. Each has a reference or a
verifiable check (``tools.router.judge``). Nothing is fitted or calibrated on these.
"""

from __future__ import annotations


def _c(*forms: str, case_sensitive: bool = False) -> dict:
    return {"kind": "contains", "any": list(forms), **({"case_sensitive": True} if case_sensitive else {})}


def _n(value: float) -> dict:
    return {"kind": "number", "value": value}


def _r(*rules: tuple) -> dict:
    return {"kind": "rules", "rules": [list(rule) for rule in rules]}


ITEMS: list[tuple[str, str, dict]] = [
    # factual, in a user's words
    ("factual", "hey, quick question - what's the capital of france again?", _c("Paris")),
    ("factual", "I'm planning a trip to Japan. Which city is its capital?", _c("Tokyo")),
    ("factual", "My kid asked me which planet is the biggest one. Do you know?", _c("Jupiter")),
    ("factual", "Settle an argument: how many legs does an insect have?", _c("6", "six")),
    ("factual", "what do you call a baby cat", _c("kitten")),
    ("factual", "What's the name of the star at the center of our solar system?", _c("Sun")),
    ("factual", "Which ocean lies between Europe and North America?", _c("Atlantic")),
    ("factual", "Can you tell me who wrote Hamlet?", _c("Shakespeare")),
    ("factual", "I always forget: is a tomato botanically a fruit or a vegetable?", _c("fruit")),
    ("factual", "Which gas makes up most of the air we breathe?", _c("nitrogen")),
    ("factual", "What is the color of a ripe banana?", _c("yellow")),
    ("factual", "In which country would I find the city of Rome?", _c("Italy")),
    ("factual", "How many days are in a normal week?", _c("7", "seven")),
    ("factual", "What animal is famous for having a very long neck?", _c("giraffe")),
    ("factual", "Which season comes after winter?", _c("spring")),
    ("factual", "What is the main ingredient of guacamole?", _c("avocado")),
    ("factual", "wich planet do we live on?", _c("Earth")),
    ("factual", "What's the opposite of 'cheap'?", _c("expensive", "dear", "costly")),
    (
        "factual",
        "Which is heavier, a kilogram of feathers or a kilogram of iron?",
        _c("same", "equal", "neither", "both"),
    ),
    ("factual", "Name the largest country in the world by area.", _c("Russia")),
    ("factual", "What do we call the frozen form of water?", _c("ice")),
    ("factual", "Who was the first person to walk on the Moon?", _c("Armstrong")),
    ("factual", "What is the largest organ of the human body?", _c("skin")),
    ("factual", "How many strings does a standard guitar have?", _c("6", "six")),
    ("factual", "What language do people speak in Mexico?", _c("Spanish")),
    # math word problems
    ("math", "I had 12 apples and ate 3. How many apples do I have now?", _n(9)),
    ("math", "A pizza is cut into 8 slices. If 4 friends share it equally, how many slices does each get?", _n(2)),
    ("math", "Tom is 7 years old. His sister is twice his age. How old is his sister?", _n(14)),
    (
        "math",
        "If a train leaves at 3 pm and the trip takes 2 hours, at what hour does it arrive?",
        _c("5 pm", "5pm", "5:00", "17:00", "five"),
    ),
    ("math", "What's 15% of 200?", _n(30)),
    ("math", "I bought 3 notebooks at 4 dollars each. How much did I spend?", _n(12)),
    ("math", "A rectangle is 5 cm wide and 3 cm tall. What is its area in square centimetres?", _n(15)),
    ("math", "How many minutes are there in two and a half hours?", _n(150)),
    (
        "math",
        "There are 30 students and 6 tables. How many students sit at each table if they are spread evenly?",
        _n(5),
    ),
    ("math", "what is one hundred minus thirty-seven", _n(63)),
    ("math", "If I save 10 dollars a week, how much do I have after 8 weeks?", _n(80)),
    ("math", "Sara read 20 pages on Monday and 35 on Tuesday. How many pages in total?", _n(55)),
    ("math", "Half of 86 is?", _n(43)),
    ("math", "A dozen eggs minus 5 eggs leaves how many eggs?", _n(7)),
    ("math", "It is 9 degrees now and the temperature drops by 12 degrees. What is the new temperature?", _n(-3)),
    # instructions a user would give
    (
        "instruction",
        "Give me just one word that means 'very happy'. One word only, please.",
        _r(
            ("max_words", 1),
        ),
    ),
    (
        "instruction",
        "Could you answer in ALL CAPS: what color is the sky on a clear day?",
        _r(("all_caps", None), ("contains", "blue")),
    ),
    (
        "instruction",
        "Please list two fruits, separated by a comma, nothing else.",
        _r(("comma_items", 2), ("max_words", 6)),
    ),
    (
        "instruction",
        "Write me a two-line rhyme about rain. Exactly two lines.",
        _r(
            ("lines", 2),
        ),
    ),
    (
        "instruction",
        "Respond with the number 42 and nothing else.",
        _r(
            ("one_of", ["42"]),
        ),
    ),
    ("instruction", "Tell me a very short joke, under 25 words.", _r(("max_words", 25), ("min_words", 4))),
    (
        "instruction",
        "Start your reply with 'Sure!' and then name a vegetable.",
        _r(
            ("starts_with", "Sure!"),
        ),
    ),
    (
        "instruction",
        "In no more than eight words, why is sleep important?",
        _r(
            ("max_words", 8),
        ),
    ),
    (
        "instruction",
        "Reply in lowercase only: what is your favourite season?",
        _r(
            ("all_lower", None),
        ),
    ),
    ("instruction", "Type the word 'banana' backwards.", _c("ananab")),
    (
        "instruction",
        'Give me a JSON object with keys "city" and "country" for Paris.',
        _r(("json", None), ("contains", "France")),
    ),
    (
        "instruction",
        "Write a sentence that mentions both 'moon' and 'coffee'.",
        _r(("contains", "moon"), ("contains", "coffee")),
    ),
    (
        "instruction",
        "Say 'good morning' in English without any punctuation.",
        _r(("contains", "good morning"), ("not_contains", "!")),
    ),
    (
        "instruction",
        "Answer yes or no only. Is a whale a mammal?",
        _r(
            ("one_of", ["yes"]),
        ),
    ),
    (
        "instruction",
        "List three primary colours, one per line.",
        _r(
            ("lines", 3),
        ),
    ),
    (
        "instruction",
        "Write one sentence about dogs that does not contain the word 'dog'.",
        _r(("not_contains", "dog"), ("min_words", 3)),
    ),
    # rewriting
    ("rewriting", "Can you fix the spelling in this: 'I recieved the pakage yesterday.'", _c("received the package")),
    (
        "rewriting",
        "Make this all uppercase please: good night everyone",
        _c("GOOD NIGHT EVERYONE", case_sensitive=True),
    ),
    ("rewriting", "Change 'I am happy' into the past tense.", _c("I was happy")),
    ("rewriting", "Turn this into a question: You like tea.", _c("Do you like tea")),
    ("rewriting", "Make 'The dogs are barking' singular.", _c("The dog is barking")),
    ("rewriting", "Rewrite 'cannot' as two words.", _c("can not")),
    ("rewriting", "Expand the contraction: don't", _c("do not")),
    ("rewriting", "Write this number in words: 21", _c("twenty-one", "twenty one")),
    ("rewriting", "Put these in alphabetical order: pear, apple, mango", _c("apple, mango, pear")),
    ("rewriting", "Replace every 'cat' with 'dog': The cat saw another cat.", _c("The dog saw another dog")),
    ("rewriting", "Remove the word 'very' from: It was a very cold day.", _c("It was a cold day")),
    ("rewriting", "lowercase this: HELLO WORLD", _c("hello world", case_sensitive=True)),
    ("rewriting", "What's the plural of 'foot'?", _c("feet")),
    ("rewriting", "Give the comparative form of 'good'.", _c("better")),
    ("rewriting", "What is the past tense of 'fly'?", _c("flew")),
    # Python, as asked in a code review or by a learner
    ("python", "In Python, if x = [1, 2, 3], what does len(x) give me?", _n(3)),
    ("python", "quick python q: what does 'hello'[1] return?", _c("e")),
    ("python", "What will print(10 // 3) show in Python?", _n(3)),
    ("python", "In Python what is the result of 2 + 3 * 4?", _n(14)),
    ("python", "I wrote x = 'a' * 3 in Python. What is x?", _c("aaa")),
    ("python", "What type is the value 3.5 in Python?", _c("float")),
    ("python", "What does bool('') evaluate to in Python?", _c("False", case_sensitive=True)),
    ("python", "In Python, what does [1, 2, 3][-1] return?", _n(3)),
    ("python", "Which method would I call to make 'abc' into 'ABC' in Python?", _c("upper")),
    ("python", "How do I get the keys of a dict d in Python? Just the method name.", _c("keys")),
    ("python", "What does list(range(3)) produce in Python?", _c("[0, 1, 2]", "[0,1,2]")),
    ("python", "My Python loop needs to stop early. Which statement do I use?", _c("break")),
    ("python", "What keyword do I use in Python to create a generator value inside a function?", _c("yield")),
    ("python", "Is Python's list type mutable? Answer yes or no.", _c("yes")),
    ("python", "What does 'a,b'.split(',') return in Python?", _c("['a', 'b']", '["a", "b"]')),
    ("python", "What is 7 % 2 in Python?", _n(1)),
    ("python", "What is the output of print(type(5)) in Python?", _c("int")),
    ("python", "Which Python module would you import to read CSV files?", _c("csv")),
    # Chinese, and mixed languages
    ("chinese", "请问，日本的首都是哪里？", _c("东京", "Tokyo")),
    ("chinese", "小明有五个苹果，吃了两个，还剩几个？", _n(3)),
    ("chinese", "一年有多少天？", _n(365)),
    ("chinese", "“dog”的中文是什么？", _c("狗")),
    ("chinese", "中国最长的河流是什么？", _c("长江", "Yangtze")),
    ("chinese", "十乘以十等于多少？", _n(100)),
    ("chinese", "太阳从哪个方向升起？", _c("东", "east")),
    ("chinese", "Please answer in Chinese: what is the Chinese word for 'thank you'?", _c("谢谢")),
    ("chinese", "What does 你好 mean in English?", _c("hello", "hi")),
    ("chinese", "请把“good morning”翻译成中文。", _c("早上好", "早安")),
    ("chinese", "一周有几天？", _n(7)),
    ("chinese", "水在摄氏多少度结冰？", _n(0)),
    (
        "chinese",
        "请用中文说一句问候的话。",
        _r(
            ("chinese", None),
        ),
    ),
    ("chinese", "What is the capital of China? 请用中文回答。", _c("北京")),
    ("chinese", "三加五等于几？", _n(8)),
]
