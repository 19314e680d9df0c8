"""Generate the small sample corpus that ships with mtpf (src/mtpf/sample_data/) for `mtpf demo`.

Everything here is written for the project from templates and word lists below — no third-party text —
in the same layout as ../shared/data: ner/, cls/, pairs/, raw/. It exists so the demo runs offline on a
fresh machine; its scores say nothing about model quality.

    python scripts/make_sample_data.py            # rewrites src/mtpf/sample_data/
"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "mtpf" / "sample_data"

PEOPLE = ["Maria Lopez", "John Carter", "Aiko Tanaka", "Omar Haddad", "Lena Fischer", "Ravi Patel",
          "Chloe Martin", "Igor Petrov", "Grace Okafor", "Tom Baker", "Sofia Rossi", "Daniel Kim", "Nora Berg",
          "Pedro Alves", "Hannah Cohen", "Yusuf Demir", "Emma Walsh", "Lucas Moreau", "Mei Chen", "Ali Khan"]
PLACES = ["Berlin", "Toronto", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul",
          "New Delhi", "Buenos Aires", "Cape Town", "San Diego", "Hamburg", "Nairobi", "Lyon", "Perth",
          "Quebec City", "Kyoto"]
ORGS = ["Northwind Bank", "Bluefin Airlines", "Orbital Labs", "Greenfield University", "Atlas Motors",
        "Harbor Health", "Pinecone Media", "Silverline Rail", "Kestrel Foods", "Nimbus Software",
        "the Red Cross", "Vertex Energy", "Copper Hill Council", "Luma Studios", "Tidewater Shipping"]
EVENTS = ["Spring Tech Summit", "Harbor Marathon", "World Food Fair", "Northern Film Festival",
          "Open Chess Cup", "Global Climate Forum", "River Jazz Week", "City Science Expo"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

NER_TEMPLATES = [
    "{PER} flew from {LOC} to {LOC} on {day} .",
    "{PER} joined {ORG} as chief engineer last year .",
    "{ORG} opened a new office in {LOC} this week .",
    "Officials in {LOC} said {ORG} will hire 200 people .",
    "{PER} and {PER} met at the {MISC} in {LOC} .",
    "The {MISC} drew record crowds , according to {ORG} .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "Shares of {ORG} rose after the {MISC} .",
    "{PER} will speak about climate policy in {LOC} on {day} .",
    "Fans travelled from {LOC} to watch {PER} win the {MISC} .",
    "{ORG} and {ORG} signed a partnership in {LOC} .",
    "Heavy rain delayed trains between {LOC} and {LOC} .",
    "{PER} was named head of research at {ORG} .",
    "The mayor of {LOC} praised {PER} for her work .",
    "Tickets for the {MISC} sold out within an hour .",
]

INTENTS = {
    "check_balance": ["what is my account balance", "how much money do I have left",
                      "show me the balance of my {acct} account", "can you tell me my current balance",
                      "balance of {acct} please", "how much is in my {acct}"],
    "transfer_money": ["send {amt} to {per}", "transfer {amt} from {acct} to savings",
                       "I want to move {amt} to my {acct} account", "pay {per} {amt} today",
                       "wire {amt} to {per} in {loc}", "please transfer {amt} to {per}"],
    "book_flight": ["book a flight from {loc} to {loc2}", "I need a plane ticket to {loc2} on {day}",
                    "find me flights to {loc} next {day}", "reserve a seat on a flight to {loc2}",
                    "are there cheap flights from {loc} to {loc2}", "get me to {loc} by plane on {day}"],
    "weather": ["what is the weather in {loc} on {day}", "will it rain in {loc} tomorrow",
                "how hot will it be in {loc2}", "weather forecast for {loc} this {day}",
                "do I need an umbrella in {loc2}", "is it going to snow in {loc}"],
    "restaurant": ["find a cheap {food} place near {loc}", "book a table for two at a {food} restaurant",
                   "where can I get good {food} food in {loc2}", "any {food} restaurants open late",
                   "recommend a {food} spot for {day} night", "reserve dinner at a {food} restaurant in {loc}"],
}
FOODS = ["italian", "thai", "mexican", "sushi", "vegan", "indian", "greek", "korean", "french"]
ACCTS = ["checking", "savings", "joint", "business", "travel"]
AMTS = ["20 dollars", "50 euros", "100 pounds", "75 dollars", "300 euros", "12 dollars"]

PARAPHRASE_PAIRS = [
    ("The train to {loc} was delayed by an hour .", "Trains heading for {loc} ran sixty minutes late ."),
    ("{per} bought a new bike in {loc} .", "In {loc} , {per} purchased a new bicycle ."),
    ("{org} reported higher profits this quarter .", "This quarter {org} earned more than before ."),
    ("It will be sunny in {loc} on {day} .", "{day} should bring clear skies to {loc} ."),
    ("{per} is learning to cook {food} food .", "{per} has started taking {food} cooking lessons ."),
    ("The museum in {loc} reopened after repairs .", "After renovation work , {loc}'s museum opened again ."),
    ("{org} plans to build a factory near {loc} .", "A new plant by {org} is planned close to {loc} ."),
    ("{per} missed the bus on {day} morning .", "On {day} morning {per} was too late for the bus ."),
]
TITLE_LEAD = [
    ("{org} expands to {loc}", "{org} said on {day} it will open its first branch in {loc} next year ."),
    ("Storm hits {loc}", "A strong storm brought heavy winds and flooding to {loc} on {day} ."),
    ("{per} wins {misc}", "{per} took first place at the {misc} after a close final round ."),
    ("{org} recalls cars", "{org} is recalling thousands of vehicles over a brake problem ."),
    ("New mayor for {loc}", "Voters in {loc} elected {per} as their new mayor on {day} ."),
    ("{misc} opens in {loc}", "The {misc} started in {loc} with more visitors than expected ."),
]
RAW_TEMPLATES = NER_TEMPLATES + [
    "The weather in {LOC} stayed mild for most of the week .",
    "Researchers at {ORG} published a study on sleep and memory .",
    "{PER} told reporters that the project was on schedule .",
    "A small cafe in {LOC} now serves breakfast all day .",
    "The committee will meet again on {day} to discuss the budget .",
]


def fill_ner(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for piece in template.split():
        kind = {"{PER}": "PER", "{LOC}": "LOC", "{ORG}": "ORG", "{MISC}": "MISC"}.get(piece)
        if kind:
            pool = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS, "MISC": EVENTS}[kind]
            words = rng.choice(pool).split()
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        elif piece == "{day}":
            tokens.append(rng.choice(DAYS))
            tags.append("O")
        else:
            tokens.append(piece)
            tags.append("O")
    return tokens, tags


def fill(template: str, rng: random.Random) -> str:
    loc = rng.choice(PLACES)
    return template.format(
        loc=loc, loc2=rng.choice([p for p in PLACES if p != loc]), per=rng.choice(PEOPLE), org=rng.choice(ORGS),
        day=rng.choice(DAYS), food=rng.choice(FOODS), acct=rng.choice(ACCTS), amt=rng.choice(AMTS),
        misc=rng.choice(EVENTS), PER=rng.choice(PEOPLE), LOC=loc, ORG=rng.choice(ORGS), MISC=rng.choice(EVENTS),
    )


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def main() -> None:
    rng = random.Random(2026)
    ner = [fill_ner(rng.choice(NER_TEMPLATES), rng) for _ in range(600)]
    ner = [{"tokens": t, "tags": g} for t, g in ner]
    write_jsonl(OUT / "ner" / "sample_news" / "train.jsonl", ner[:400])
    write_jsonl(OUT / "ner" / "sample_news" / "dev.jsonl", ner[400:500])
    write_jsonl(OUT / "ner" / "sample_news" / "test.jsonl", ner[500:])

    rows = []
    for label, templates in INTENTS.items():
        for _ in range(90):
            rows.append({"text": fill(rng.choice(templates), rng), "label": label})
    rng.shuffle(rows)
    write_jsonl(OUT / "cls" / "sample_intents" / "train.jsonl", rows[:300])
    write_jsonl(OUT / "cls" / "sample_intents" / "test.jsonl", rows[300:])

    seen, para = set(), []
    while len(para) < 300:
        a, p = rng.choice(PARAPHRASE_PAIRS)
        vals = dict(loc=rng.choice(PLACES), per=rng.choice(PEOPLE), org=rng.choice(ORGS), day=rng.choice(DAYS),
                    food=rng.choice(FOODS))
        pair = (a.format(**vals), p.format(**vals))
        if pair[0] not in seen:
            seen.add(pair[0])
            para.append({"anchor": pair[0], "positive": pair[1]})
    write_jsonl(OUT / "pairs" / "sample_paraphrases.jsonl", para)
    seen, news = set(), []
    while len(news) < 300:
        a, p = rng.choice(TITLE_LEAD)
        vals = dict(loc=rng.choice(PLACES), per=rng.choice(PEOPLE), org=rng.choice(ORGS), day=rng.choice(DAYS),
                    misc=rng.choice(EVENTS))
        pair = (a.format(**vals), p.format(**vals))
        if pair[0] not in seen and pair[1] not in seen:
            seen.update(pair)
            news.append({"anchor": pair[0], "positive": pair[1]})
    write_jsonl(OUT / "pairs" / "sample_title_lead.jsonl", news)

    raw = sorted({fill(rng.choice(RAW_TEMPLATES), rng) for _ in range(900)})
    rng.shuffle(raw)
    (OUT / "raw").mkdir(parents=True, exist_ok=True)
    (OUT / "raw" / "sample_sentences.txt").write_text("\n".join(raw[:600]) + "\n")
    (OUT / "README.md").write_text(
        "# Sample data for `mtpf demo`\n\nGenerated by `scripts/make_sample_data.py` from templates written for "
        "mtpf (no third-party text), in the layout of `../shared/data`. It exists so the demo runs offline; "
        "scores on it say nothing about model quality.\n")


if __name__ == "__main__":
    main()
