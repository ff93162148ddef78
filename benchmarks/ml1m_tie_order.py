"""ML-1M: how the ordered ml-1m.txt and a stable time sort of MovieLens' ratings.dat differ on same-second ratings.

    .venv/bin/python benchmarks/ml1m_tie_order.py RATINGS [--ordered ../shared/data/ml-1m.txt] [--delimiter ::]

The reference code builds its ML-1M from ratings.dat with a stable sort by user and time, so films a user rated in
the same second keep the file's order (tslrec's ingest does the same: ties by file, row and position). ml-1m.txt
carries no times; this script recovers its item numbering from the ratings (the ids of each same-second group,
intersected over users) and reports, per user, whether the two orders give the same sequence and the same
validation and test items, how often the last two ratings share a second, and whether the file's order within a
user is one order of the films shared by all users (then the reference's ties are learnable; a random order's are
not). RATINGS may be a partial copy: users with a rating whose time is unreadable or outside --span (a copy edited
for a data-cleaning exercise) or whose count differs from ml-1m.txt are left out, and the script says how many.
"""

from __future__ import annotations

import argparse
import collections
import random
import shlex
import sys
from pathlib import Path

Ratings = dict[int, list[tuple[int, int]]]  # user -> [(time, film)] in the file's order

ML1M_SPAN = (956_703_932, 1_046_454_590)  # the first and last rating of ML-1M, seconds since 1970


def read_ratings(path: Path, delimiter: str, span: tuple[int, int]) -> tuple[Ratings, set[int]]:
    """The users' ratings, and the users with a line that cannot be one of ML-1M's ratings."""
    ratings: Ratings = collections.defaultdict(list)
    unusable: set[int] = set()
    for line in path.read_text().splitlines():
        fields = line.split(delimiter)
        try:
            user, film, time = int(fields[0]), int(fields[1]), int(fields[3])
        except (IndexError, ValueError):
            if fields[0].isdigit():
                unusable.add(int(fields[0]))
            continue
        if not span[0] <= time <= span[1]:
            unusable.add(user)
        ratings[user].append((time, film))
    return ratings, unusable


def read_ordered(path: Path, users: set[int]) -> dict[int, list[int]]:
    ordered: dict[int, list[int]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        user, item = map(int, line.split())
        if user in users:
            ordered[user].append(item)
    return ordered


def same_second_groups(rows: list[tuple[int, int]]) -> list[list[int]]:
    """The user's films by second, seconds in time order, films in the file's order."""
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for time, film in rows:
        groups[time].append(film)
    return [groups[time] for time in sorted(groups)]


def item_ids(ratings: Ratings, ordered: dict[int, list[int]]) -> dict[int, int]:
    """ml-1m.txt's id of each film whose id the same-second groups pin down."""
    candidates: dict[int, set[int]] = {}
    for user, ids in ordered.items():
        position = 0
        for films in same_second_groups(ratings[user]):
            group = set(ids[position:position + len(films)])
            position += len(films)
            for film in films:
                candidates[film] = candidates.get(film, group) & group
    if not all(candidates.values()):
        raise SystemExit("the ratings do not fit ml-1m.txt's order by time: is it the same data set?")
    settled: set[int] = set()
    while True:
        newly = {next(iter(c)) for c in candidates.values() if len(c) == 1} - settled
        if not newly:
            break
        settled |= newly
        for film, ids in candidates.items():
            if len(ids) > 1:
                candidates[film] = ids - settled
    return {film: next(iter(ids)) for film, ids in candidates.items() if len(ids) == 1}


def compare_orders(ratings: Ratings, ordered: dict[int, list[int]], ids: dict[int, int]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for user, theirs in ordered.items():
        stable = [ids.get(film) for _, film in sorted(ratings[user], key=lambda r: r[0])]
        if None in stable[-2:]:
            counts["users whose last two films have no recovered id"] += 1
            continue
        times = sorted(time for time, _ in ratings[user])
        counts["users compared"] += 1
        counts["same whole sequence"] += stable == theirs
        counts["same validation item"] += stable[-2] == theirs[-2]
        counts["same test item"] += stable[-1] == theirs[-1]
        counts["same validation and test items"] += stable[-2:] == theirs[-2:]
        counts["last two ratings in one second"] += times[-1] == times[-2]
        position = {item: k for k, item in enumerate(theirs)}
        for films in same_second_groups(ratings[user]):
            known = [film for film in films if film in ids]
            for a, b in ((a, b) for k, a in enumerate(known) for b in known[k + 1:]):
                counts["same-second pairs"] += 1
                counts["  of those, ml-1m.txt's order is ratings.dat's"] += position[ids[a]] < position[ids[b]]
                counts["  of those, ml-1m.txt's order is by film id"] += (position[ids[a]] < position[ids[b]]) == (a < b)
        rows = ratings[user]
        for k, (time_a, _) in enumerate(rows):
            for time_b, _ in rows[k + 1:]:
                if time_a != time_b:
                    counts["ratings.dat: pairs of a user's lines in different seconds"] += 1
                    counts["  of those, in time order"] += time_a < time_b
    return counts


def order_agreement(ratings: Ratings, span: tuple[int, int], least: int) -> dict[str, tuple[int, float]]:
    """For pairs of films rated by at least `least` users: how many, and the mean share of those users whose order
    of the pair is the pair's majority order, by the file's order, by time (valid times in different seconds) and
    by a random order of each user's ratings (the share chance alone gives). Up to 60 ratings a user, sampled,
    keep it quick."""
    rng = random.Random(0)
    names = ("the file's order", "time (different seconds)", "a random order")
    tallies = {name: (collections.Counter(), collections.Counter()) for name in names}
    for rows in ratings.values():
        picked = sorted(rng.sample(range(len(rows)), min(60, len(rows))))
        shuffled = {x: k for k, x in enumerate(rng.sample(picked, len(picked)))}
        for k, x in enumerate(picked):
            for y in picked[k + 1:]:
                (time_a, a), (time_b, b) = rows[x], rows[y]
                pair = (min(a, b), max(a, b))
                orders = {names[0]: True, names[2]: shuffled[x] < shuffled[y]}
                if time_a != time_b and all(span[0] <= t <= span[1] for t in (time_a, time_b)):
                    orders[names[1]] = time_a < time_b
                for name, a_first in orders.items():
                    first, seen = tallies[name]
                    seen[pair] += 1
                    first[pair] += (a < b) == a_first
    agreement = {}
    for name, (first, seen) in tallies.items():
        shares = [max(first[p], seen[p] - first[p]) / seen[p] for p in seen if seen[p] >= least]
        agreement[name] = (len(shares), sum(shares) / len(shares) if shares else float("nan"))
    return agreement


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ratings", type=Path, help="MovieLens-1M's ratings.dat (user::item::rating::time), or a copy")
    parser.add_argument("--ordered", type=Path, default=Path(__file__).parents[2] / "shared/data/ml-1m.txt")
    parser.add_argument("--delimiter", default="::")
    parser.add_argument("--span", type=int, nargs=2, default=ML1M_SPAN, help="first and last valid time, seconds")
    args = parser.parse_args(argv)
    print("$", shlex.join(["benchmarks/ml1m_tie_order.py", *argv]))
    ratings, unusable = read_ratings(args.ratings, args.delimiter, tuple(args.span))
    ordered = read_ordered(args.ordered, set(ratings) - unusable)
    users = [u for u in sorted(ordered) if len(ordered[u]) == len(ratings[u])]
    print(f"users in {args.ratings.name}: {len(ratings)}; left out: {len(unusable)} with a rating whose time is "
          f"unreadable or outside {args.span}, {len(ordered) - len(users)} whose count differs from "
          f"{args.ordered.name}; compared: {len(users)}")
    ordered = {u: ordered[u] for u in users}
    ids = item_ids(ratings, ordered)
    print(f"films: {len({f for u in users for _, f in ratings[u]})}, their ml-1m.txt id recovered: {len(ids)}")
    counts = compare_orders(ratings, ordered, ids)
    for name, value in counts.items():
        print(f"  {name}: {value}")
    print(f"the order of a user's films, over all {len(ratings)} users of {args.ratings.name}: the mean share of "
          "users in the pair's majority order")
    for least in (5, 20):
        agreement = order_agreement(ratings, tuple(args.span), least)
        print(f"  pairs of films rated by >= {least} users: "
              + ", ".join(f"by {name} {share:.3f} ({pairs} pairs)" for name, (pairs, share) in agreement.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
