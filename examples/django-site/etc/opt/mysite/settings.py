# Bundled example: what /etc/opt/$DJANGO_PROJECT/settings.py looks like on the seed's server.
from mysite.settings import *  # noqa

DEBUG = False
ALLOWED_HOSTS = ["example.com"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/var/opt/mysite/mysite.db"}}
STATIC_ROOT = "/var/cache/mysite/static"
MEDIA_ROOT = "/var/opt/mysite/media"
