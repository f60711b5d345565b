class InterruptedException(BaseException):
    pass
