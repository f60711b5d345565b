import traceback

reported = []


def report(message, *, exc_info=False):
    reported.append((message, traceback.format_exc() if exc_info else None))
