"""A deterministic, multilingual sample corpus for the demo and the benchmarks.

``sample_articles`` yields feed articles about twelve topics in English, Japanese,
German, French, Spanish and Chinese, plus a few mixed-script articles (English and
Japanese sentences with emoji, language ``"mul"``). Bodies are made of sentences from a
per-topic, per-language pool, so articles of the same topic share vocabulary, which is
what a lexical embedding (``worker.local_embedding``) can pick up.

Everything is derived from ``seed`` (and ``now`` for the timestamps): the same arguments
always give the same articles. Generation is cheap (paragraphs are pre-built once per
call, an article is a handful of random draws and one string join), so 100,000 articles
take a few seconds.

Lengths are measured in characters (``len(content)``) and follow a log-normal
distribution with a median of about 4,500 characters, truncated to
``[min_chars, max_chars]``: with a large ``max_chars`` the median is ~4,500 characters;
with the default ``max_chars=6000`` it is ~3,500 characters, which is ~4.5 KB of UTF-8
because Japanese and Chinese take 3 bytes a character. ``tags[0]`` is always the topic.
Sentences repeat within an article (each topic has a small sentence pool), which is fine
for throughput and similarity demos but makes same-topic articles near-duplicates.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Final

__all__ = ["LANGUAGES", "TOPICS", "SampleArticle", "sample_articles", "sample_queries"]


@dataclass(frozen=True)
class SampleArticle:
    feed_id: int
    user_id: int
    title: str
    content: str
    tags: tuple[str, ...]
    is_read: bool
    published_at: datetime
    language: str


TOPICS: Final = (
    "databases",
    "weather",
    "football",
    "cooking",
    "space",
    "markets",
    "music",
    "travel",
    "health",
    "programming",
    "climate",
    "elections",
)

# Relative frequency of each language in the corpus ("mul": English + Japanese + emoji).
_LANGUAGE_WEIGHTS: Final = {
    "en": 38,
    "ja": 25,
    "de": 8,
    "fr": 8,
    "es": 8,
    "zh": 8,
    "mul": 5,
}
LANGUAGES: Final = tuple(_LANGUAGE_WEIGHTS)

_MEDIAN_CHARS: Final = 4500
_SIGMA: Final = 0.6
_WINDOW: Final = timedelta(days=120)
_FEEDS: Final = 16
_USERS: Final = 4
_READ_RATIO: Final = 0.35
_PARAGRAPHS_PER_POOL: Final = 24

_EXTRA_TAGS: Final[Mapping[str, tuple[str, ...]]] = {
    "databases": ("postgresql", "pgvector", "indexing", "sql", "backup"),
    "weather": ("forecast", "rain", "storm", "temperature"),
    "football": ("soccer", "league", "cup", "transfers"),
    "cooking": ("recipes", "baking", "vegetarian", "kitchen"),
    "space": ("astronomy", "rockets", "mars", "moon"),
    "markets": ("stocks", "economy", "interest-rates", "oil"),
    "music": ("albums", "concerts", "festivals", "jazz"),
    "travel": ("trains", "hotels", "hiking", "flights"),
    "health": ("fitness", "sleep", "nutrition", "vaccines"),
    "programming": ("python", "rust", "testing", "ci"),
    "climate": ("energy", "emissions", "drought", "glaciers"),
    "elections": ("politics", "polls", "parliament", "voting"),
}

_EMOJI: Final[Mapping[str, tuple[str, ...]]] = {
    "databases": ("🐘", "💾", "🔎"),
    "weather": ("☀️", "🌧️", "⛈️", "🌈"),
    "football": ("⚽", "🏆", "🥅"),
    "cooking": ("🍳", "🍅", "🍞", "🍛"),
    "space": ("🚀", "🌕", "🛰️", "🪐"),
    "markets": ("📉", "📈", "💹"),
    "music": ("🎵", "🎸", "🎹", "🎷"),
    "travel": ("✈️", "🚆", "🏨", "🗺️"),
    "health": ("🏃", "💉", "🥦", "😴"),
    "programming": ("💻", "🐍", "🦀", "🐛"),
    "climate": ("🌍", "🔥", "🌊", "🌱"),
    "elections": ("🗳️", "🏛️", "📊"),
}

# Filler values for {city}, {name}, {num}, {small}, {temp}, {pct} in the templates.
_CITIES: Final[Mapping[str, tuple[str, ...]]] = {
    "en": ("Tokyo", "Berlin", "Paris", "Madrid", "New York", "London", "Osaka", "Toronto"),
    "ja": ("東京", "大阪", "札幌", "福岡", "名古屋", "京都", "仙台", "横浜"),
    "de": ("Berlin", "München", "Hamburg", "Köln", "Wien", "Zürich"),
    "fr": ("Paris", "Lyon", "Marseille", "Bordeaux", "Lille", "Genève"),
    "es": ("Madrid", "Barcelona", "Sevilla", "Valencia", "Ciudad de México", "Buenos Aires"),
    "zh": ("北京", "上海", "广州", "深圳", "杭州", "成都"),
}
_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "en": ("Alice Chen", "Marco Rossi", "Priya Natarajan", "Tom Becker", "Sofia García"),
    "ja": ("田中", "佐藤", "鈴木", "高橋", "伊藤", "山本"),
    "de": ("Lukas Müller", "Anna Schmidt", "Jonas Weber", "Lea Fischer"),
    "fr": ("Camille Martin", "Hugo Bernard", "Léa Dubois", "Louis Moreau"),
    "es": ("Lucía Fernández", "Javier López", "Carmen Ruiz", "Diego Torres"),
    "zh": ("王磊", "李娜", "张伟", "刘洋"),
}
_DECIMAL_COMMA: Final = frozenset({"de", "fr", "es"})

_TITLES: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "en": {
        "databases": (
            "How we scaled PostgreSQL vector search",
            "Tuning autovacuum on a busy database",
            "HNSW or IVFFlat: choosing a pgvector index",
        ),
        "weather": ("Storm warning for {city}", "Sunny weekend ahead", "Rain returns to {city}"),
        "football": (
            "Late equaliser earns a draw",
            "Derby win keeps title hopes alive",
            "Cup final decided by a penalty",
        ),
        "cooking": ("Simple tomato soup", "How to bake bread at home", "A fragrant curry"),
        "space": (
            "New satellite reaches orbit",
            "Rover finds signs of ancient water",
            "Telescope studies a distant exoplanet",
        ),
        "markets": (
            "Stocks slide on rate fears",
            "Oil extends its rally",
            "Chipmaker shares jump on record earnings",
        ),
        "music": ("Band returns with a new album", "Summer festival sells out", "Jazz in {city}"),
        "travel": ("A weekend in {city}", "Night trains are back", "Hiking the coastal trail"),
        "health": (
            "Why short walks after meals help",
            "Flu season arrives early",
            "Sleep, exercise and your heart",
        ),
        "programming": (
            "Vectorising a slow Python loop",
            "Hunting down a race condition",
            "Our CI pipeline, explained",
        ),
        "climate": ("Hottest year on record", "Closing the last coal plant", "Farming in drought"),
        "elections": (
            "Voters head to the polls",
            "Governing party loses its majority",
            "What young voters want",
        ),
    },
    "ja": {
        "databases": (
            "PostgreSQLでベクトル検索を高速化した話",
            "autovacuumのチューニング入門",
            "pgvectorのインデックスの選び方",
        ),
        "weather": ("{city}に暴風警報", "週末は晴れの予報", "東京の天気：雨のち晴れ"),
        "football": (
            "終了間際の同点ゴールで引き分け",
            "ダービーを制して首位を守る",
            "カップ戦の決勝はPKで決着",
        ),
        "cooking": ("簡単トマトスープの作り方", "おうちで焼くパン", "スパイスが香るカレー"),
        "space": (
            "新しい人工衛星が軌道に到達",
            "火星で古代の水の痕跡を発見",
            "宇宙望遠鏡が系外惑星の大気を観測",
        ),
        "markets": ("金利上昇懸念で株価が下落", "原油価格が続伸", "半導体株が好決算で急騰"),
        "music": ("五年ぶりのニューアルバム", "夏フェスのチケットが即完売", "{city}のジャズの夜"),
        "travel": ("{city}で過ごす週末", "寝台列車の旅", "海沿いのハイキングコースを歩く"),
        "health": (
            "食後の散歩が体に良い理由",
            "インフルエンザの流行が早まる",
            "睡眠と運動と心臓の健康",
        ),
        "programming": (
            "遅いPythonのループをベクトル化する",
            "競合状態のバグを追いかけて",
            "私たちのCIパイプライン",
        ),
        "climate": (
            "観測史上最も暑い一年",
            "最後の石炭火力発電所を閉鎖へ",
            "干ばつに立ち向かう農家",
        ),
        "elections": ("有権者が投票所へ", "与党が過半数を失う", "若い有権者が求めるもの"),
    },
    "de": {
        "databases": ("PostgreSQL-Vektorsuche im Praxistest", "Datenbank-Indizes richtig wählen"),
        "weather": ("Sturmwarnung für {city}", "Sonniges Wochenende erwartet"),
        "football": ("Später Ausgleich im Derby", "Elfmeter entscheidet das Pokalfinale"),
        "cooking": ("Einfache Tomatensuppe", "Brot selbst backen"),
        "space": ("Neuer Satellit im All", "Spuren von Wasser auf dem Mars"),
        "markets": ("Aktien unter Druck", "Ölpreis steigt weiter"),
        "music": ("Neues Album nach fünf Jahren", "Sommerfestival ausverkauft"),
        "travel": ("Ein Wochenende in {city}", "Mit dem Nachtzug reisen"),
        "health": ("Bewegung schützt das Herz", "Neuer Impfstoff überzeugt"),
        "programming": ("Python-Bibliothek mit Typannotationen", "Jagd auf eine Race Condition"),
        "climate": ("Wärmstes Jahr seit Beginn der Aufzeichnungen", "Abschied von der Kohle"),
        "elections": ("Knappes Rennen erwartet", "Regierung verliert ihre Mehrheit"),
    },
    "fr": {
        "databases": ("La recherche vectorielle dans PostgreSQL", "Bien choisir son index"),
        "weather": ("Alerte tempête à {city}", "Un week-end ensoleillé"),
        "football": ("Égalisation tardive dans le derby", "Un penalty décide la finale"),
        "cooking": ("Soupe à la tomate facile", "Faire son pain maison"),
        "space": ("Un nouveau satellite en orbite", "Des traces d'eau sur Mars"),
        "markets": ("Les marchés reculent", "Le pétrole poursuit sa hausse"),
        "music": ("Un nouvel album après cinq ans", "Le festival affiche complet"),
        "travel": ("Un week-end à {city}", "Le retour des trains de nuit"),
        "health": ("Le sport protège le cœur", "Un nouveau vaccin prometteur"),
        "programming": (
            "Des annotations de type en Python",
            "À la chasse aux bogues de concurrence",
        ),
        "climate": ("L'année la plus chaude jamais mesurée", "Adieu au charbon"),
        "elections": ("Une élection serrée", "Le gouvernement perd sa majorité"),
    },
    "es": {
        "databases": ("Búsqueda vectorial en PostgreSQL", "Cómo elegir un índice"),
        "weather": ("Aviso por tormentas en {city}", "Fin de semana soleado"),
        "football": ("Empate en el último minuto", "Un penalti decide la final"),
        "cooking": ("Sopa de tomate fácil", "Pan casero paso a paso"),
        "space": ("Un nuevo satélite en órbita", "Rastros de agua en Marte"),
        "markets": ("Las bolsas caen", "El petróleo sigue subiendo"),
        "music": ("Nuevo álbum cinco años después", "Entradas agotadas para el festival"),
        "travel": ("Un fin de semana en {city}", "Viajar en tren nocturno"),
        "health": ("El ejercicio protege el corazón", "Una nueva vacuna eficaz"),
        "programming": ("Anotaciones de tipo en Python", "A la caza de una condición de carrera"),
        "climate": ("El año más cálido registrado", "Adiós al carbón"),
        "elections": ("Elecciones reñidas", "El gobierno pierde la mayoría"),
    },
    "zh": {
        "databases": ("用PostgreSQL做向量搜索", "如何选择数据库索引"),
        "weather": ("{city}发布大风预警", "周末天气晴朗"),
        "football": ("补时扳平比分", "点球决定杯赛冠军"),
        "cooking": ("简单的番茄汤", "在家烤面包"),
        "space": ("新卫星成功入轨", "火星发现古代水的痕迹"),
        "markets": ("股市大幅下跌", "油价连续上涨"),
        "music": ("乐队五年来首张新专辑", "音乐节门票售罄"),
        "travel": ("{city}周末游", "乘夜班火车旅行"),
        "health": ("运动保护心脏", "新疫苗效果显著"),
        "programming": ("Python库增加类型注解", "排查竞态条件"),
        "climate": ("有记录以来最热的一年", "告别煤电"),
        "elections": ("选举竞争激烈", "执政党失去多数席位"),
    },
}

_SENTENCES: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "en": {
        "databases": (
            "The team moved its product catalogue to PostgreSQL and added a pgvector index "
            "for similarity search.",
            "An HNSW index answers nearest-neighbour queries in milliseconds, but building it "
            "on {num} million rows takes a while.",
            "Autovacuum settings matter more than most people think once a table grows past a "
            "few hundred gigabytes.",
            "Partitioning the events table by month kept every index small enough to stay in "
            "memory.",
            "The query planner chose a sequential scan because the statistics were stale; "
            "running ANALYZE fixed it.",
            "Connection pooling with PgBouncer cut the number of idle database connections "
            "from hundreds to a handful.",
            "Logical replication lets you upgrade a database cluster with only a few seconds "
            "of downtime.",
            "Write-ahead log archiving and point-in-time recovery are the backbone of any "
            "serious backup strategy.",
            "Vector search inside the database keeps embeddings next to the rows they "
            "describe and keeps transactions consistent.",
        ),
        "weather": (
            "Heavy rain is expected in {city} this afternoon, with thunderstorms moving in "
            "from the west.",
            "Forecasters say the weekend will be sunny and dry, with highs around {temp} degrees.",
            "A cold front will bring strong winds and a sharp drop in temperature overnight.",
            "The weather service issued a storm warning for the coast and advised residents "
            "to stay indoors.",
            "Morning fog should clear by noon, leaving clear skies and light winds for the "
            "rest of the day.",
            "Snow is likely in the mountains, while the valleys will see cold rain and sleet.",
            "Humidity will stay high all week, and the chance of rain rises to {num} percent "
            "on Thursday.",
            "After three weeks without rain, the forecast finally shows showers for {city} on "
            "Sunday.",
        ),
        "football": (
            "The home side scored twice in the second half to win the derby in front of a "
            "sold-out stadium.",
            "{name} headed in a late equaliser from a corner, and the match ended in a draw.",
            "The coach changed the formation at half-time, and the midfield finally "
            "controlled the game.",
            "A penalty in stoppage time decided the cup final, sending the visiting fans into "
            "celebration.",
            "The league leaders have now gone {num} matches without a defeat.",
            "The young striker signed a new contract and is expected to start on Saturday.",
            "Both goalkeepers made several fine saves, but a deflected shot settled the game.",
            "The club confirmed that its captain will miss the next few weeks with a "
            "hamstring injury.",
        ),
        "cooking": (
            "Fry the onions slowly in butter until they turn golden, then add the garlic and "
            "a pinch of salt.",
            "This recipe for tomato soup needs only fresh tomatoes, olive oil, basil and a "
            "little patience.",
            "Let the dough rest for an hour so that the bread rises evenly in the oven.",
            "Season the chicken with lemon, pepper and thyme before roasting it for {num} minutes.",
            "A good risotto needs warm stock added one ladle at a time while you keep stirring.",
            "Whisk the eggs with sugar until pale, then fold in the flour to keep the cake light.",
            "Toast the spices in a dry pan first; it makes the curry much more fragrant.",
            "Serve the pasta with grated parmesan and a spoonful of the cooking water to "
            "loosen the sauce.",
        ),
        "space": (
            "The rocket lifted off at dawn and placed the new satellite into orbit {num} "
            "minutes later.",
            "Astronomers used the space telescope to study the atmosphere of a distant exoplanet.",
            "The rover drilled into the Martian rock and found traces of ancient water.",
            "Engineers are testing the heat shield that will protect the capsule during re-entry.",
            "A solar storm lit up the night sky with auroras much further south than usual.",
            "The lunar lander touched down near the south pole of the Moon, where ice may be "
            "hidden in craters.",
            "Astronauts on the space station spent six hours outside repairing a solar panel.",
            "The probe will fly past Jupiter and use its gravity to reach the outer solar system.",
        ),
        "markets": (
            "Stocks fell sharply on Monday as investors worried about rising interest rates.",
            "The central bank kept interest rates unchanged, and bond yields slipped after "
            "the announcement.",
            "Shares of the chipmaker jumped {pct} percent after it reported record quarterly "
            "earnings.",
            "Oil prices climbed for a third day because of supply concerns.",
            "The stock market closed lower, with technology shares leading the decline.",
            "Analysts expect inflation to ease later this year, which could support share prices.",
            "The yen weakened against the dollar, helping exporters but raising import costs.",
            "Trading volume was thin ahead of the holiday, and the index ended almost flat.",
        ),
        "music": (
            "The band released its first album in five years, recorded live in a small "
            "studio in {city}.",
            "The orchestra opened the season with a Beethoven symphony and a new piece by a "
            "young composer.",
            "Tickets for the summer festival sold out within {num} minutes.",
            "The singer's new single mixes acoustic guitar with electronic beats.",
            "After the concert, the pianist played two encores for the standing crowd.",
            "The jazz quartet improvised for almost an hour, trading solos on saxophone and drums.",
            "Vinyl sales keep growing, and record shops report queues on release days.",
            "{name} said the lyrics of the new songs were inspired by long train journeys at "
            "night.",
        ),
        "travel": (
            "The old town is best explored on foot, with narrow streets, small cafés and a "
            "view from the castle.",
            "Book the night train early, because sleeper cabins to {city} sell out weeks ahead.",
            "The airline added direct flights to {city}, cutting the journey by several hours.",
            "Our hotel was a short walk from the station and had a quiet garden.",
            "Travellers should check passport and visa rules before booking a trip abroad.",
            "The coastal hiking trail takes about {small} hours and passes several fishing "
            "villages.",
            "Museums are free on the first Sunday of the month, so expect long queues.",
            "Local buses are cheap and frequent, but a rail pass is better for longer journeys.",
        ),
        "health": (
            "Regular exercise and enough sleep lower the risk of heart disease.",
            "Doctors recommend at least {num} minutes of moderate physical activity a day.",
            "The new vaccine showed strong protection in a clinical trial with thousands of "
            "volunteers.",
            "Hospitals are seeing more flu patients than usual for this time of year.",
            "A diet rich in vegetables, whole grains and fish supports long-term health.",
            "Researchers found that short walks after meals help to control blood sugar.",
            "Mental health services are expanding, but waiting lists remain long.",
            "Drinking enough water matters most during hot weather and physical exercise.",
        ),
        "programming": (
            "The new release of the Python library adds type hints and drops support for old "
            "versions.",
            "Writing the unit tests first made the refactoring much less risky.",
            "The bug was a race condition between two threads updating the same counter.",
            "The Rust borrow checker rejected the code until the ownership of the buffer was "
            "clear.",
            "The team replaced a slow loop with vectorised NumPy code, and the job ran "
            "{small} times faster.",
            "Continuous integration runs the linter, the type checker and the test suite on "
            "every pull request.",
            "The API returns JSON, and the client retries with exponential backoff on errors.",
            "Profiling showed that most of the time was spent serialising objects, not in "
            "the database.",
        ),
        "climate": (
            "Global temperatures last year were the highest on record, according to climate "
            "scientists.",
            "The country plans to close its last coal power plant and expand wind and solar "
            "energy.",
            "Melting glaciers are raising sea levels and threatening coastal cities.",
            "Carbon emissions from transport have barely fallen in the last decade.",
            "Farmers are adapting to longer droughts by changing crops and saving water.",
            "The climate summit ended with a promise to triple renewable energy capacity by 2030.",
            "Heatwaves are becoming more frequent and more intense as the planet warms.",
            "Restoring forests and wetlands can absorb carbon and protect against floods.",
        ),
        "elections": (
            "Voters head to the polls on Sunday in an election that is expected to be close.",
            "The opposition candidate promised lower taxes and more spending on schools.",
            "Turnout reached {num} percent, the highest in two decades.",
            "Early results show the governing party losing its majority in parliament.",
            "The two leading candidates clashed over the economy in a televised debate.",
            "Election officials said the count would take several days because of postal ballots.",
            "Polls suggest that young voters care most about housing and climate policy.",
            "The new coalition government will be sworn in next week.",
        ),
    },
    "ja": {
        "databases": (
            "社内の商品データをPostgreSQLに移行し、類似検索のためにpgvectorのインデックスを"
            "追加しました。",
            "HNSWインデックスを使うと近傍検索は数ミリ秒で終わりますが、数千万行に作成するには"
            "かなり時間がかかります。",
            "テーブルが数百ギガバイトを超えると、autovacuumの設定がとても重要になります。",
            "イベントテーブルを月ごとにパーティション分割したことで、インデックスがメモリに"
            "収まるようになりました。",
            "統計情報が古かったためにクエリプランナーがシーケンシャルスキャンを選んでいましたが、"
            "ANALYZEを実行したら解決しました。",
            "PgBouncerでコネクションプーリングを導入し、アイドル状態の接続を大幅に減らしました。",
            "論理レプリケーションを使えば、数秒の停止だけでデータベースをアップグレードできます。",
            "WALのアーカイブとポイントインタイムリカバリは、バックアップ戦略の基本です。",
            "データベースの中でベクトル検索を行えば、トランザクションの一貫性を保ったまま"
            "類似検索ができます。",
        ),
        "weather": (
            "{city}では今日の午後から強い雨が降り、夕方には雷雨になる見込みです。",
            "週末は晴れて空気が乾燥し、最高気温は{temp}度前後になるでしょう。",
            "寒冷前線の影響で、夜にかけて風が強まり、気温が急に下がります。",
            "気象庁は沿岸部に暴風警報を発表し、不要不急の外出を控えるよう呼びかけています。",
            "朝の霧は昼までに晴れ、その後は穏やかな天気が続くでしょう。",
            "山沿いでは雪が降り、平地でも冷たい雨やみぞれになるところがあります。",
            "今週は湿度の高い日が続き、木曜日の降水確率は{num}パーセントです。",
            "三週間ぶりに、{city}でも日曜日に雨の予報が出ました。",
            "東京の天気は晴れ時々曇りで、明日の朝は少し冷え込みそうです。",
        ),
        "football": (
            "ホームチームは後半に2点を挙げ、満員のスタジアムでダービーを制しました。",
            "{name}選手がコーナーキックから終了間際に同点ゴールを決め、試合は引き分けに"
            "終わりました。",
            "監督はハーフタイムにフォーメーションを変更し、ようやく中盤を支配できるように"
            "なりました。",
            "カップ戦の決勝はアディショナルタイムのPKで決着し、アウェーのサポーターが歓喜に"
            "沸きました。",
            "首位のチームはこれで{num}試合負けなしです。",
            "若いフォワードが新しい契約にサインし、土曜日の試合で先発する見込みです。",
            "両チームのゴールキーパーが好セーブを連発しましたが、最後はこぼれ球からの得点で"
            "試合が決まりました。",
            "クラブはキャプテンが太ももの肉離れで数週間離脱すると発表しました。",
        ),
        "cooking": (
            "玉ねぎをバターでじっくり炒め、きつね色になったらにんにくと塩を少し加えます。",
            "このトマトスープは、新鮮なトマトとオリーブオイル、バジルだけで作れます。",
            "パン生地を一時間ほど休ませると、オーブンできれいに膨らみます。",
            "鶏肉にレモンとこしょう、タイムで下味をつけてから、{num}分ほど焼きます。",
            "だしを丁寧にとると、味噌汁の味がぐっと良くなります。",
            "卵と砂糖を白っぽくなるまで泡立ててから小麦粉をさっくり混ぜると、ふわふわの"
            "ケーキになります。",
            "カレーはスパイスを最初に乾煎りすると、香りがぐんと引き立ちます。",
            "炊きたてのご飯に焼き魚と漬物を添えれば、立派な和食の朝ごはんになります。",
        ),
        "space": (
            "ロケットは夜明けに打ち上げられ、約{num}分後に新しい人工衛星を軌道に投入しました。",
            "天文学者たちは宇宙望遠鏡を使って、遠くの系外惑星の大気を調べました。",
            "探査車は火星の岩石を掘削し、かつて水が存在した痕跡を見つけました。",
            "技術者たちは、大気圏再突入の際にカプセルを守る耐熱シールドの試験を行っています。",
            "太陽フレアの影響で、普段よりずっと南の地域でもオーロラが見られました。",
            "月面着陸機は、クレーターに氷が眠っている可能性がある月の南極付近に着陸しました。",
            "国際宇宙ステーションの宇宙飛行士が、六時間の船外活動で太陽電池パネルを修理しました。",
            "探査機は木星の重力を利用して加速し、太陽系の外側へ向かいます。",
        ),
        "markets": (
            "金利上昇への警戒感から、月曜日の株式市場は大きく下落しました。",
            "中央銀行は政策金利を据え置き、発表後に長期金利は低下しました。",
            "半導体メーカーの株価は、過去最高の四半期決算を受けて{pct}%上昇しました。",
            "供給への懸念から、原油価格は三日続けて上昇しました。",
            "株式市場はハイテク株を中心に売られ、日経平均株価は反落して取引を終えました。",
            "アナリストは年後半にはインフレが落ち着き、株価を下支えすると見ています。",
            "円安ドル高が進み、輸出企業には追い風となる一方で輸入コストが上がっています。",
            "連休を前に取引は閑散としており、株価指数はほぼ横ばいで引けました。",
        ),
        "music": (
            "バンドは五年ぶりとなるアルバムを発表し、{city}の小さなスタジオで一発録りした"
            "そうです。",
            "オーケストラはベートーヴェンの交響曲と若手作曲家の新作でシーズンを開幕しました。",
            "夏の音楽フェスのチケットは、発売から{num}分で完売しました。",
            "歌手の新曲は、アコースティックギターと電子音のビートを組み合わせています。",
            "演奏会の後、ピアニストはスタンディングオベーションに応えてアンコールを二曲"
            "弾きました。",
            "ジャズカルテットは一時間近くにわたって、サックスとドラムのソロを交わしました。",
            "レコードの売り上げは伸び続けており、発売日にはレコード店に行列ができます。",
            "作詞について、{name}さんは夜行列車での長い旅から着想を得たと話しています。",
        ),
        "travel": (
            "旧市街は歩いて回るのが一番で、細い路地や小さなカフェ、城からの眺めを楽しめます。",
            "寝台列車は早めに予約しましょう。{city}行きの個室は数週間前に売り切れます。",
            "航空会社は{city}への直行便を新設し、移動時間が数時間短くなりました。",
            "私たちのホテルは駅から歩いてすぐで、静かな庭がありました。",
            "海外旅行を予約する前に、パスポートの有効期限とビザの条件を確認してください。",
            "海沿いのハイキングコースは約{small}時間で、いくつもの漁村を通り抜けます。",
            "京都の寺や神社は朝早く訪れると、観光客が少なくて静かです。",
            "地元のバスは安くて本数も多いですが、長距離の移動には鉄道パスのほうが便利です。",
        ),
        "health": (
            "適度な運動と十分な睡眠は、心臓病のリスクを下げます。",
            "医師は一日に少なくとも{num}分の適度な運動を勧めています。",
            "新しいワクチンは、数千人が参加した臨床試験で高い予防効果を示しました。",
            "この時期としては例年より多くのインフルエンザ患者が病院を訪れています。",
            "野菜や全粒穀物、魚を多く含む食事は、長い目で見て健康を支えます。",
            "食後に軽く歩くと血糖値の上昇を抑えられることが、研究で分かりました。",
            "心の健康を支えるサービスは広がっていますが、予約の待ち時間はまだ長いままです。",
            "暑い日や運動するときは、こまめに水分をとることが大切です。",
        ),
        "programming": (
            "Pythonライブラリの新しいバージョンでは型ヒントが追加され、古いバージョンの"
            "サポートが終了しました。",
            "先にユニットテストを書いておいたおかげで、リファクタリングのリスクがずっと"
            "小さくなりました。",
            "原因は、二つのスレッドが同じカウンターを更新する競合状態でした。",
            "所有権がはっきりするまで、Rustのボローチェッカーはコードのコンパイルを"
            "通しませんでした。",
            "遅いループをNumPyのベクトル演算に置き換えたところ、処理が{small}倍速くなりました。",
            "プルリクエストのたびに、CIでリンター、型チェッカー、テストが実行されます。",
            "APIはJSONを返し、クライアントはエラー時に指数バックオフで再試行します。",
            "プロファイリングの結果、時間の大半はデータベースではなくシリアライズに"
            "使われていました。",
        ),
        "climate": (
            "気候学者によると、昨年の世界の平均気温は観測史上最高でした。",
            "政府は最後の石炭火力発電所を閉鎖し、風力と太陽光発電を拡大する計画です。",
            "氷河の融解によって海面が上昇し、沿岸の都市が脅かされています。",
            "運輸部門からの二酸化炭素の排出量は、この十年でほとんど減っていません。",
            "農家は品種を変えたり水を節約したりして、長引く干ばつに適応しようとしています。",
            "気候変動サミットは、2030年までに再生可能エネルギーを三倍にするという約束で"
            "閉幕しました。",
            "地球温暖化が進むにつれて、熱波はより頻繁に、より激しくなっています。",
            "森林や湿地を再生すれば、炭素を吸収し、洪水から地域を守ることができます。",
        ),
        "elections": (
            "日曜日の選挙は接戦が予想されており、有権者が投票所に向かっています。",
            "野党の候補者は減税と教育予算の拡充を公約に掲げました。",
            "投票率は{num}%に達し、過去二十年で最も高くなりました。",
            "開票速報によると、与党は議会で過半数を失う見通しです。",
            "有力候補の二人は、テレビ討論会で経済政策をめぐって激しく論争しました。",
            "選挙管理委員会は、郵便投票があるため開票には数日かかると発表しました。",
            "世論調査によると、若い有権者は住宅問題と気候政策を最も重視しています。",
            "新しい連立政権は来週発足する予定です。",
        ),
    },
    "de": {
        "databases": (
            "Das Team hat den Produktkatalog nach PostgreSQL migriert und einen "
            "pgvector-Index für die Ähnlichkeitssuche angelegt.",
            "Ein HNSW-Index beantwortet Nachbarschaftsanfragen in Millisekunden, aber der "
            "Aufbau dauert bei großen Tabellen lange.",
            "Veraltete Statistiken führten zu einem sequenziellen Scan; ein ANALYZE hat das "
            "Problem behoben.",
            "Mit einer Partitionierung nach Monaten bleiben die Indizes der Datenbank klein "
            "genug für den Arbeitsspeicher.",
        ),
        "weather": (
            "In {city} wird am Nachmittag starker Regen erwartet, am Abend ziehen Gewitter auf.",
            "Das Wochenende bleibt sonnig und trocken bei Höchstwerten um {temp} Grad.",
            "Eine Kaltfront bringt in der Nacht kräftigen Wind und deutlich niedrigere "
            "Temperaturen.",
            "Der Wetterdienst warnt an der Küste vor Sturmböen und rät, zu Hause zu bleiben.",
        ),
        "football": (
            "Die Gastgeber drehten das Spiel in der zweiten Halbzeit und gewannen das Derby "
            "vor ausverkauftem Stadion.",
            "{name} köpfte nach einer Ecke kurz vor Schluss den Ausgleich.",
            "Der Tabellenführer ist nun seit {num} Spielen ungeschlagen.",
            "Ein Elfmeter in der Nachspielzeit entschied das Pokalfinale.",
        ),
        "cooking": (
            "Die Zwiebeln langsam in Butter goldbraun braten, dann Knoblauch und eine Prise "
            "Salz dazugeben.",
            "Der Teig sollte eine Stunde ruhen, damit das Brot im Ofen gleichmäßig aufgeht.",
            "Für diese Tomatensuppe braucht man nur frische Tomaten, Olivenöl und Basilikum.",
            "Das Hähnchen mit Zitrone, Pfeffer und Thymian würzen und {num} Minuten im Ofen garen.",
        ),
        "space": (
            "Die Rakete startete im Morgengrauen und brachte den neuen Satelliten in die "
            "Umlaufbahn.",
            "Mit dem Weltraumteleskop untersuchten Astronomen die Atmosphäre eines fernen "
            "Exoplaneten.",
            "Der Rover bohrte in das Gestein auf dem Mars und fand Spuren von Wasser.",
            "Die Astronauten der Raumstation reparierten bei einem Außeneinsatz ein Solarmodul.",
        ),
        "markets": (
            "Die Aktienkurse fielen am Montag deutlich, weil Anleger steigende Zinsen fürchten.",
            "Die Zentralbank ließ den Leitzins unverändert, die Renditen der Anleihen gaben nach.",
            "Die Aktie des Chipherstellers stieg nach Rekordzahlen um {pct} Prozent.",
            "Der Ölpreis legte wegen Sorgen um das Angebot den dritten Tag in Folge zu.",
        ),
        "music": (
            "Die Band veröffentlicht ihr erstes Album seit fünf Jahren, aufgenommen in einem "
            "kleinen Studio in {city}.",
            "Das Orchester eröffnete die Saison mit einer Sinfonie von Beethoven.",
            "Die Karten für das Sommerfestival waren nach {num} Minuten ausverkauft.",
            "Nach dem Konzert spielte die Pianistin zwei Zugaben.",
        ),
        "travel": (
            "Die Altstadt erkundet man am besten zu Fuß, durch enge Gassen und vorbei an "
            "kleinen Cafés.",
            "Der Nachtzug nach {city} ist oft Wochen im Voraus ausgebucht.",
            "Vor einer Reise ins Ausland sollte man Reisepass und Visumregeln prüfen.",
            "Unser Hotel lag nur wenige Minuten vom Bahnhof entfernt.",
        ),
        "health": (
            "Regelmäßige Bewegung und ausreichend Schlaf senken das Risiko für Herzkrankheiten.",
            "Ärzte empfehlen mindestens {num} Minuten moderate Bewegung am Tag.",
            "Der neue Impfstoff zeigte in einer klinischen Studie einen hohen Schutz.",
            "Eine Ernährung mit viel Gemüse, Vollkorn und Fisch unterstützt die Gesundheit.",
        ),
        "programming": (
            "Die neue Version der Python-Bibliothek bringt Typannotationen und entfernt alte "
            "Schnittstellen.",
            "Der Fehler war eine Race Condition zwischen zwei Threads, die denselben Zähler "
            "änderten.",
            "Dank der Unit-Tests war das Refactoring viel weniger riskant.",
            "Die CI-Pipeline führt bei jedem Pull Request Linter, Typprüfung und Tests aus.",
        ),
        "climate": (
            "Laut Klimaforschern war das vergangene Jahr das wärmste seit Beginn der "
            "Aufzeichnungen.",
            "Das Land will sein letztes Kohlekraftwerk schließen und Wind- und Solarenergie "
            "ausbauen.",
            "Schmelzende Gletscher lassen den Meeresspiegel steigen.",
            "Hitzewellen werden mit der Erderwärmung häufiger und heftiger.",
        ),
        "elections": (
            "Am Sonntag wird gewählt, und die Umfragen sagen ein knappes Ergebnis voraus.",
            "Die Wahlbeteiligung lag bei {num} Prozent, so hoch wie seit zwanzig Jahren nicht.",
            "Nach ersten Hochrechnungen verliert die Regierungspartei ihre Mehrheit im Parlament.",
            "Die beiden Spitzenkandidaten stritten im Fernsehduell über die Wirtschaftspolitik.",
        ),
    },
    "fr": {
        "databases": (
            "L'équipe a migré son catalogue vers PostgreSQL et ajouté un index pgvector pour "
            "la recherche par similarité.",
            "Un index HNSW répond aux requêtes de plus proches voisins en quelques millisecondes.",
            "Des statistiques obsolètes poussaient le planificateur vers un parcours "
            "séquentiel ; un ANALYZE a réglé le problème.",
            "Le partitionnement de la table par mois garde chaque index de la base de données "
            "en mémoire.",
        ),
        "weather": (
            "De fortes pluies sont attendues cet après-midi à {city}, avec des orages en soirée.",
            "Le week-end sera ensoleillé et sec, avec des maximales autour de {temp} degrés.",
            "Un front froid apportera du vent fort et une nette baisse des températures cette "
            "nuit.",
            "Le littoral est placé en vigilance orange pour les tempêtes.",
        ),
        "football": (
            "L'équipe à domicile a marqué deux fois en seconde période pour remporter le derby.",
            "{name} a égalisé de la tête sur un corner en fin de match.",
            "Le leader du championnat reste invaincu depuis {num} matchs.",
            "Un penalty dans le temps additionnel a décidé la finale de la coupe.",
        ),
        "cooking": (
            "Faites revenir les oignons dans le beurre jusqu'à ce qu'ils dorent, puis ajoutez "
            "l'ail.",
            "Cette recette de soupe à la tomate demande seulement des tomates fraîches, de "
            "l'huile d'olive et du basilic.",
            "Laissez reposer la pâte une heure pour que le pain lève bien au four.",
            "Un bon risotto demande d'ajouter le bouillon chaud louche après louche.",
        ),
        "space": (
            "La fusée a décollé à l'aube et placé le nouveau satellite en orbite.",
            "Les astronomes ont étudié l'atmosphère d'une exoplanète lointaine avec le "
            "télescope spatial.",
            "Le rover a foré la roche martienne et trouvé des traces d'eau ancienne.",
            "Les astronautes de la station spatiale ont réparé un panneau solaire lors d'une "
            "sortie.",
        ),
        "markets": (
            "Les actions ont fortement reculé lundi, les investisseurs craignant une hausse "
            "des taux.",
            "La banque centrale a maintenu ses taux, et les rendements obligataires ont baissé.",
            "L'action du fabricant de puces a bondi de {pct} % après des résultats record.",
            "Les cours du pétrole ont progressé pour la troisième séance consécutive.",
        ),
        "music": (
            "Le groupe sort son premier album depuis cinq ans, enregistré dans un petit "
            "studio à {city}.",
            "L'orchestre a ouvert la saison avec une symphonie de Beethoven.",
            "Les billets du festival d'été se sont vendus en {num} minutes.",
            "Après le concert, la pianiste a joué deux rappels.",
        ),
        "travel": (
            "La vieille ville se découvre à pied, entre ruelles étroites et petits cafés.",
            "Réservez tôt le train de nuit pour {city}, les couchettes partent vite.",
            "Avant de partir à l'étranger, vérifiez votre passeport et les règles de visa.",
            "Notre hôtel était à quelques minutes à pied de la gare.",
        ),
        "health": (
            "Une activité physique régulière et un bon sommeil réduisent le risque de "
            "maladies cardiaques.",
            "Les médecins recommandent au moins {num} minutes d'activité modérée par jour.",
            "Le nouveau vaccin a montré une forte protection lors d'un essai clinique.",
            "Une alimentation riche en légumes, en céréales complètes et en poisson favorise "
            "la santé.",
        ),
        "programming": (
            "La nouvelle version de la bibliothèque Python ajoute des annotations de type.",
            "Le bogue venait d'une situation de concurrence entre deux threads.",
            "Les tests unitaires ont rendu la refactorisation beaucoup moins risquée.",
            "L'intégration continue lance le linter, le vérificateur de types et les tests à "
            "chaque pull request.",
        ),
        "climate": (
            "Selon les climatologues, l'année dernière a été la plus chaude jamais enregistrée.",
            "Le pays prévoit de fermer sa dernière centrale à charbon et de développer "
            "l'éolien et le solaire.",
            "La fonte des glaciers fait monter le niveau de la mer.",
            "Les vagues de chaleur deviennent plus fréquentes avec le réchauffement climatique.",
        ),
        "elections": (
            "Les électeurs se rendent aux urnes dimanche pour une élection qui s'annonce serrée.",
            "La participation a atteint {num} %, un record depuis vingt ans.",
            "Selon les premiers résultats, le parti au pouvoir perd sa majorité au parlement.",
            "Les deux principaux candidats se sont affrontés sur l'économie lors du débat "
            "télévisé.",
        ),
    },
    "es": {
        "databases": (
            "El equipo migró su catálogo a PostgreSQL y añadió un índice pgvector para la "
            "búsqueda por similitud.",
            "Un índice HNSW responde consultas de vecinos más cercanos en milisegundos.",
            "Las estadísticas desactualizadas provocaban un escaneo secuencial; ejecutar "
            "ANALYZE lo solucionó.",
            "Particionar la tabla por meses mantiene cada índice de la base de datos en memoria.",
        ),
        "weather": (
            "Se esperan lluvias fuertes en {city} esta tarde, con tormentas por la noche.",
            "El fin de semana será soleado y seco, con máximas de unos {temp} grados.",
            "Un frente frío traerá viento fuerte y un descenso brusco de las temperaturas.",
            "El servicio meteorológico emitió un aviso por temporal en la costa.",
        ),
        "football": (
            "El equipo local marcó dos goles en la segunda parte y ganó el derbi.",
            "{name} empató de cabeza tras un córner en los últimos minutos.",
            "El líder de la liga suma {num} partidos sin perder.",
            "Un penalti en el tiempo de descuento decidió la final de copa.",
        ),
        "cooking": (
            "Sofríe la cebolla en aceite de oliva hasta que esté dorada y añade el ajo.",
            "Esta receta de sopa de tomate solo necesita tomates frescos, aceite de oliva y "
            "albahaca.",
            "Deja reposar la masa una hora para que el pan suba bien en el horno.",
            "Para una buena paella, el arroz no se remueve después de añadir el caldo.",
        ),
        "space": (
            "El cohete despegó al amanecer y puso el nuevo satélite en órbita.",
            "Los astrónomos estudiaron la atmósfera de un exoplaneta lejano con el telescopio "
            "espacial.",
            "El rover perforó la roca marciana y encontró rastros de agua antigua.",
            "Los astronautas de la estación espacial repararon un panel solar durante una "
            "caminata espacial.",
        ),
        "markets": (
            "Las acciones cayeron con fuerza el lunes por el temor a nuevas subidas de tipos.",
            "El banco central mantuvo los tipos de interés y la rentabilidad de los bonos bajó.",
            "Las acciones del fabricante de chips subieron un {pct} % tras resultados récord.",
            "El precio del petróleo subió por tercer día consecutivo.",
        ),
        "music": (
            "La banda publica su primer álbum en cinco años, grabado en un pequeño estudio de "
            "{city}.",
            "La orquesta abrió la temporada con una sinfonía de Beethoven.",
            "Las entradas del festival de verano se agotaron en {num} minutos.",
            "Tras el concierto, la pianista tocó dos bises.",
        ),
        "travel": (
            "El casco antiguo se recorre mejor a pie, entre calles estrechas y pequeños cafés.",
            "Reserva pronto el tren nocturno a {city}, porque las literas se agotan rápido.",
            "Antes de viajar al extranjero, revisa el pasaporte y los requisitos de visado.",
            "Nuestro hotel estaba a pocos minutos a pie de la estación.",
        ),
        "health": (
            "El ejercicio regular y dormir lo suficiente reducen el riesgo de enfermedades "
            "del corazón.",
            "Los médicos recomiendan al menos {num} minutos de actividad moderada al día.",
            "La nueva vacuna mostró una alta protección en un ensayo clínico.",
            "Una dieta rica en verduras, cereales integrales y pescado favorece la salud.",
        ),
        "programming": (
            "La nueva versión de la biblioteca de Python añade anotaciones de tipo.",
            "El error era una condición de carrera entre dos hilos que actualizaban el mismo "
            "contador.",
            "Las pruebas unitarias hicieron que la refactorización fuera mucho menos arriesgada.",
            "La integración continua ejecuta el linter, el comprobador de tipos y las pruebas "
            "en cada pull request.",
        ),
        "climate": (
            "Según los climatólogos, el año pasado fue el más cálido desde que hay registros.",
            "El país cerrará su última central de carbón y ampliará la energía eólica y solar.",
            "El deshielo de los glaciares está elevando el nivel del mar.",
            "Las olas de calor son cada vez más frecuentes con el calentamiento global.",
        ),
        "elections": (
            "Los votantes acuden a las urnas el domingo en unas elecciones muy reñidas.",
            "La participación alcanzó el {num} %, la más alta en dos décadas.",
            "Los primeros resultados muestran que el partido del gobierno pierde la mayoría "
            "en el parlamento.",
            "Los dos principales candidatos discutieron sobre la economía en el debate televisado.",
        ),
    },
    "zh": {
        "databases": (
            "团队把商品目录迁移到了PostgreSQL，并添加了pgvector索引来做相似度搜索。",
            "HNSW索引可以在几毫秒内完成近邻查询，但在大表上建立索引需要很长时间。",
            "由于统计信息过期，查询规划器选择了顺序扫描，执行ANALYZE后问题解决了。",
            "按月对数据库表进行分区后，每个索引都能放进内存。",
        ),
        "weather": (
            "{city}今天下午将有大雨，傍晚可能出现雷阵雨。",
            "周末天气晴朗干燥，最高气温在{temp}度左右。",
            "受冷空气影响，夜间风力加大，气温明显下降。",
            "气象台发布了沿海地区的大风预警，提醒市民减少外出。",
        ),
        "football": (
            "主队在下半场打进两球，在满场观众面前赢得了德比。",
            "{name}在比赛最后时刻头球扳平了比分。",
            "联赛领头羊已经连续{num}场不败。",
            "杯赛决赛在补时阶段靠一粒点球分出了胜负。",
        ),
        "cooking": (
            "先用黄油把洋葱慢慢炒到金黄，再加入大蒜和少许盐。",
            "这道番茄汤只需要新鲜番茄、橄榄油和罗勒。",
            "面团要醒一个小时，面包在烤箱里才能均匀膨胀。",
            "做红烧肉时，先把糖炒出焦糖色，再放入五花肉。",
        ),
        "space": (
            "火箭在黎明时分发射升空，把新卫星送入了轨道。",
            "天文学家利用太空望远镜研究了一颗遥远系外行星的大气。",
            "火星车在岩石中钻探，发现了古代水存在的痕迹。",
            "空间站的宇航员进行了六个小时的出舱活动，修理了太阳能电池板。",
        ),
        "markets": (
            "由于担心利率上升，周一股市大幅下跌。",
            "央行维持利率不变，债券收益率随后回落。",
            "芯片制造商公布创纪录的季度业绩后，股价上涨了{pct}%。",
            "受供应担忧影响，国际油价连续三天上涨。",
        ),
        "music": (
            "乐队发行了五年来的第一张专辑，在{city}的一间小录音室录制。",
            "交响乐团以贝多芬的交响曲拉开了新乐季的序幕。",
            "夏季音乐节的门票在{num}分钟内售罄。",
            "音乐会结束后，钢琴家又加演了两首曲目。",
        ),
        "travel": (
            "老城区最适合步行游览，狭窄的街道两旁都是小咖啡馆。",
            "去{city}的夜班火车卧铺要提前几周预订。",
            "出国旅行前，请确认护照有效期和签证要求。",
            "我们的酒店离火车站只有几分钟的步行路程。",
        ),
        "health": (
            "规律运动和充足睡眠可以降低患心脏病的风险。",
            "医生建议每天至少进行{num}分钟的中等强度运动。",
            "新疫苗在有数千名志愿者参加的临床试验中显示出很强的保护效果。",
            "多吃蔬菜、全谷物和鱼类有助于长期健康。",
        ),
        "programming": (
            "新版本的Python库增加了类型注解，并停止支持旧版本。",
            "这个错误是两个线程同时更新同一个计数器造成的竞态条件。",
            "先写单元测试让重构的风险小了很多。",
            "每次提交拉取请求时，持续集成都会运行代码检查、类型检查和测试。",
        ),
        "climate": (
            "气候科学家表示，去年是有记录以来最热的一年。",
            "该国计划关闭最后一座燃煤电厂，并扩大风能和太阳能发电。",
            "冰川融化正在导致海平面上升，威胁沿海城市。",
            "随着全球变暖，热浪变得越来越频繁、越来越强烈。",
        ),
        "elections": (
            "选民将于周日前往投票站，这次选举预计竞争激烈。",
            "投票率达到{num}%，创下二十年来的新高。",
            "初步结果显示，执政党将失去议会多数席位。",
            "两位主要候选人在电视辩论中就经济政策展开激烈交锋。",
        ),
    },
}

# Between sentences of one paragraph (Japanese and Chinese use no spaces).
_JOINER: Final = {"en": " ", "ja": "", "de": " ", "fr": " ", "es": " ", "zh": "", "mul": " "}

_QUERIES: Final = (
    ("en", "PostgreSQL vector index performance"),
    ("ja", "東京の天気"),
    ("en", "storm warning and heavy rain"),
    ("ja", "株式市場の下落"),
    ("en", "late equaliser in the derby"),
    ("ja", "火星の探査車"),
    ("en", "interest rates and falling stocks"),
    ("de", "Wetter am Wochenende"),
    ("fr", "recette de soupe à la tomate"),
    ("es", "elecciones y participación"),
    ("zh", "气候变暖和冰川融化"),
)


@dataclass(frozen=True)
class _Pool:
    titles: tuple[str, ...]
    paragraphs: tuple[str, ...]
    mean_paragraph: float


def _fill(template: str, language: str, rng: random.Random) -> str:
    if "{" not in template:
        return template
    pct = f"{rng.randint(11, 99) / 10:.1f}"
    if language in _DECIMAL_COMMA:
        pct = pct.replace(".", ",")
    return template.format(
        city=rng.choice(_CITIES[language]),
        name=rng.choice(_NAMES[language]),
        num=rng.randint(3, 45),
        small=rng.randint(2, 9),
        temp=rng.randint(8, 34),
        pct=pct,
    )


def _paragraph(topic: str, language: str, rng: random.Random) -> str:
    if language == "mul":
        emoji = _EMOJI[topic]
        en = rng.sample(_SENTENCES["en"][topic], 2)
        ja = rng.sample(_SENTENCES["ja"][topic], 2)
        parts: list[str] = []
        for sentence_en, sentence_ja in zip(en, ja, strict=True):
            parts.append(_fill(sentence_en, "en", rng))
            parts.append(_fill(sentence_ja, "ja", rng) + rng.choice(emoji))
        return " ".join(parts)
    sentences = _SENTENCES[language][topic]
    picked = rng.sample(sentences, min(len(sentences), rng.randint(3, 5)))
    return _JOINER[language].join(_fill(s, language, rng) for s in picked)


def _title_templates(topic: str, language: str) -> tuple[str, ...]:
    if language != "mul":
        return _TITLES[language][topic]
    pairs = zip(_TITLES["en"][topic], _TITLES["ja"][topic], strict=True)
    return tuple(f"{en} {_EMOJI[topic][0]} {ja}" for en, ja in pairs)


@functools.lru_cache(maxsize=8)
def _pools(seed: int) -> Mapping[tuple[str, str], _Pool]:
    """Titles and paragraphs of every (language, topic), built once per seed."""
    rng = random.Random(f"embedder-sample-pools-{seed}")
    pools: dict[tuple[str, str], _Pool] = {}
    for language in LANGUAGES:
        fill_language = "en" if language == "mul" else language
        for topic in TOPICS:
            titles = tuple(
                _fill(template, fill_language, rng)
                for template in _title_templates(topic, language)
                for _ in range(3)
            )
            paragraphs = tuple(
                _paragraph(topic, language, rng) for _ in range(_PARAGRAPHS_PER_POOL)
            )
            mean = sum(len(p) + 2 for p in paragraphs) / len(paragraphs)
            pools[(language, topic)] = _Pool(tuple(sorted(set(titles))), paragraphs, mean)
    return pools


def _tag_sets(topic: str) -> tuple[tuple[str, ...], ...]:
    extra = _EXTRA_TAGS[topic]
    sets: list[tuple[str, ...]] = [(topic, tag) for tag in extra]
    sets.extend((topic, *pair) for pair in itertools.combinations(extra, 2))
    return tuple(sets)


def _truncate(body: str, limit: int, floor: int) -> str:
    """Cut ``body`` to at most ``limit`` characters, at a sentence end when possible."""
    if len(body) <= limit:
        return body
    cut = max(body.rfind("。", 0, limit), body.rfind(". ", 0, limit), body.rfind("\n", 0, limit))
    if cut > 0:
        cut_body = body[: cut + 1].rstrip()
        if len(cut_body) >= floor:
            return cut_body
    return body[:limit]


def sample_articles(
    count: int = 300,
    *,
    seed: int = 0,
    now: datetime | None = None,
    min_chars: int = 300,
    max_chars: int = 6000,
) -> Iterator[SampleArticle]:
    """Yield ``count`` deterministic sample articles (same arguments, same articles).

    ``published_at`` is spread uniformly over the 120 days before ``now`` (default: the
    current time, UTC; an explicit ``now`` must be timezone-aware). Content lengths are
    log-normal around 4,500 characters, truncated to ``[min_chars, max_chars]``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= min_chars <= max_chars:
        raise ValueError(f"need 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    return _generate(count, seed, now, min_chars, max_chars)


def _generate(
    count: int, seed: int, now: datetime, min_chars: int, max_chars: int
) -> Iterator[SampleArticle]:
    rng = random.Random(seed)
    pools = _pools(seed)
    tag_sets = {topic: _tag_sets(topic) for topic in TOPICS}
    languages = [lang for lang, weight in _LANGUAGE_WEIGHTS.items() for _ in range(weight)]

    # Log-normal lengths truncated to [min_chars, max_chars] by inverse-CDF sampling.
    normal = NormalDist()
    mu = math.log(_MEDIAN_CHARS)
    lo = normal.cdf((math.log(min_chars) - mu) / _SIGMA)
    hi = normal.cdf((math.log(max_chars) - mu) / _SIGMA)
    eps = 1e-12
    window_s = int(_WINDOW.total_seconds())

    for _ in range(count):
        language = languages[int(rng.random() * len(languages))]
        topic = TOPICS[int(rng.random() * len(TOPICS))]
        pool = pools[(language, topic)]

        p = min(max(lo + (hi - lo) * rng.random(), eps), 1.0 - eps)
        target = round(math.exp(mu + _SIGMA * normal.inv_cdf(p)))
        target = min(max(target, min_chars), max_chars)

        paragraphs = pool.paragraphs
        body = "\n\n".join(rng.choices(paragraphs, k=int(target / pool.mean_paragraph) + 2))
        while len(body) < target:
            body += "\n\n" + "\n\n".join(rng.choices(paragraphs, k=4))
        content = _truncate(body, target, min_chars)

        feed_id = 1 + int(rng.random() * _FEEDS)
        yield SampleArticle(
            feed_id=feed_id,
            user_id=1 + (feed_id - 1) % _USERS,
            title=pool.titles[int(rng.random() * len(pool.titles))],
            content=content,
            tags=tag_sets[topic][int(rng.random() * len(tag_sets[topic]))],
            is_read=rng.random() < _READ_RATIO,
            published_at=now - timedelta(seconds=int(rng.random() * window_s)),
            language=language,
        )


def sample_queries() -> list[tuple[str, str]]:
    """(language, query text) pairs for the demo's similarity search."""
    return list(_QUERIES)
